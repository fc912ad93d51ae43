"""Region-aware misalignment (`feedback.regions`): structure, geometry, isolation and
assignment as pure functions; the detector's region reports on rendered ShapesWorld scenes."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torchvision.transforms.functional import pil_to_tensor

from feedback import MisalignmentDetector
from feedback.regions import (
    RegionConfig,
    RegionReport,
    absolute_margin,
    assign,
    background_colour,
    combined_score,
    holds,
    isolate,
    overlap,
    parse_structure,
    partitions,
    relative_margin,
    sliding_windows,
)
from shapesworld import render_scene
from shapesworld.scenes import Scene, ShapeObject

# --------------------------------------------------------------------------- structure


def test_relative_relation_splits_two_phrases():
    st = parse_structure("a small red circle to the left of a blue square")
    assert [p.text for p in st.phrases] == ["a small red circle", "a blue square"]
    (rel,) = st.relations
    assert (rel.text, rel.subject, rel.other, rel.axis, rel.sign) == (
        "to the left of",
        0,
        1,
        "x",
        -1,
    )
    assert st.prompt[rel.start : rel.end] == "to the left of"
    assert [p.noun for p in st.phrases] == ["circle", "square"]


def test_absolute_placements_leave_their_phrase():
    p = "a red circle on the left and a large blue square on the right"
    st = parse_structure(p)
    assert [p.text for p in st.phrases] == ["a red circle", "a large blue square"]
    assert [(r.text, r.subject, r.other, r.axis, r.sign) for r in st.relations] == [
        ("on the left", 0, None, "x", -1),
        ("on the right", 1, None, "x", 1),
    ]
    st = parse_structure("a cat on the top, a dog at the bottom.")
    assert [p.text for p in st.phrases] == ["a cat", "a dog"]
    assert [(r.axis, r.sign) for r in st.relations] == [("y", -1), ("y", 1)]


def test_vertical_and_unjudged_relations():
    st = parse_structure("a blue square below a white cross")
    assert [(r.axis, r.sign) for r in st.relations] == [("y", 1)]
    st = parse_structure("a dog next to a cat")
    assert st.regional and not st.relations[0].judged
    st = parse_structure("a cup on top of a table")
    assert [(r.axis, r.sign) for r in st.relations] == [("y", -1)]


def test_one_phrase_is_not_regional_but_a_placed_one_is():
    assert not parse_structure("there is a small red circle").regional
    assert not parse_structure("一只红色的猫在桌子上。").regional
    st = parse_structure("a red circle on the left")
    assert st.regional and [p.text for p in st.phrases] == ["a red circle"]
    # "to the left of" is relative, never an absolute placement
    st = parse_structure("a red circle to the left of a square")
    assert all(r.other is not None for r in st.relations)


def test_cjk_commas_cut_phrases():
    st = parse_structure("红色的猫，蓝色的狗")
    assert [p.text for p in st.phrases] == ["红色的猫", "蓝色的狗"]


# --------------------------------------------------------------------------- geometry


def test_margins_say_which_side():
    size = (32, 32)
    left, right = (0, 0, 10, 10), (20, 0, 30, 10)
    assert relative_margin(left, right, "x", -1, size) > 0
    assert relative_margin(right, left, "x", -1, size) < 0
    assert relative_margin(right, left, "x", 1, size) > 0
    top, bottom = (0, 0, 10, 10), (0, 20, 10, 30)
    assert relative_margin(top, bottom, "y", -1, size) > 0
    assert absolute_margin(left, "x", -1, size) > 0 and absolute_margin(right, "x", -1, size) < 0
    assert absolute_margin(bottom, "y", 1, size) > 0
    assert holds(0.2, 0.05) is True and holds(-0.2, 0.05) is False and holds(0.01, 0.05) is None


def test_overlap_is_relative_to_the_smaller_box():
    assert overlap((0, 0, 10, 10), (20, 20, 30, 30)) == 0
    assert overlap((0, 0, 10, 10), (0, 0, 30, 30)) == pytest.approx(1.0)
    assert overlap((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(0.5)


def test_windows_and_partitions_cover_the_image():
    wins = sliding_windows((32, 48), scales=(0.5,), stride=0.5)
    assert all(b[2] <= 48 + 1e-6 and b[3] <= 32 + 1e-6 for b in wins)
    assert max(b[2] for b in wins) == pytest.approx(48) and min(b[0] for b in wins) == 0
    parts = partitions((32, 32))
    assert len(parts) == 14
    for _, low, high in parts:
        assert overlap(low, high) == 0


# --------------------------------------------------------------------------- isolation


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_fill_keeps_the_box_and_paints_the_rest(dtype):
    img = torch.full((2, 3, 16, 16), 0.2, dtype=dtype)
    img[0, :, 4:8, 4:8] = 0.9
    out = isolate(img, [0, 0, 1], [(4, 4, 8, 8), (0, 0, 0, 0), (0, 0, 8, 16)], "fill")
    assert out.shape == (3, 3, 16, 16) and out.dtype == dtype
    assert torch.equal(out[0, :, 4:8, 4:8], img[0, :, 4:8, 4:8])
    assert torch.all(out[0, :, :4] == img.new_tensor(0.2))
    assert torch.all(out[1] == img.new_tensor(0.2))  # zero-area box: the blank image
    assert torch.allclose(background_colour(img).float(), torch.full((2, 3), 0.2), atol=1e-2)


def test_blur_and_crop_isolations():
    torch.manual_seed(0)
    img = torch.rand(1, 3, 16, 16)
    blur = isolate(img, [0], [(0, 0, 8, 16)], "blur")
    assert torch.equal(blur[0, :, :, :8], img[0, :, :, :8])
    assert blur[0, :, :, 9:].std() < img[0, :, :, 9:].std()
    crop = isolate(img, [0], [(0, 0, 16, 16)], "crop")
    assert crop.shape == img.shape and torch.allclose(crop, img, atol=1e-5)


# --------------------------------------------------------------------------- assignment


def test_assignment_obeys_the_relation_and_measures_the_swap():
    size = (32, 32)
    boxes = [(0, 0, 16, 32), (16, 0, 32, 32)]
    rel = parse_structure("a red circle to the left of a blue square").relations
    cands = [(0, 1), (1, 0)]
    # the circle scores on the left region, the square on the right: the relation holds
    cos = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
    cand, total, margins = assign(cos, boxes, rel, size, candidates=cands)
    assert cand == (0, 1) and total == pytest.approx(1.7) and margins[0] == pytest.approx(1.4)
    # the image shows the swap: the stated arrangement still is the one kept, its margin < 0
    cos = torch.tensor([[0.1, 0.9], [0.8, 0.2]])
    cand, total, margins = assign(cos, boxes, rel, size, candidates=cands)
    assert cand == (0, 1) and margins[0] == pytest.approx(0.3 - 1.7)


def test_combined_score_is_pulled_down_by_any_failure():
    good = combined_score([0.8, 0.7], [True, True], [0.2])
    assert good == pytest.approx(0.7)
    assert combined_score([0.8, 0.7], [True, True], [-0.3]) < good - 0.29
    assert combined_score([0.8, 0.1], [True, False], [None]) == pytest.approx(0.1)
    assert combined_score([0.9, 0.2], [True, True], []) < combined_score(
        [0.6, 0.5], [True, True], []
    )


# --------------------------------------------------------------------------- the detector


@pytest.fixture(scope="module")
def det():
    from shapesworld.pipelines import LOOP_DETECTOR

    return MisalignmentDetector.from_pretrained(LOOP_DETECTOR)


def _scene(a, b, axis="x"):
    (ca, sa), (cb, sb) = a, b
    if axis == "x":
        pa, pb = (8.0, 16.0), (24.0, 16.0)
    else:
        pa, pb = (16.0, 8.0), (16.0, 24.0)
    return Scene(
        (ShapeObject(ca, sa, "large", *pa, 11.0), ShapeObject(cb, sb, "large", *pb, 11.0)),
        axis=axis,
    )


SCENES = [
    (("red", "circle"), ("blue", "square")),
    (("green", "triangle"), ("white", "cross")),
    (("yellow", "square"), ("purple", "circle")),
    (("cyan", "cross"), ("orange", "triangle")),
]


def _tensor(img):
    return (pil_to_tensor(img).float() / 255)[None]


def test_attribute_foil_is_found_on_its_object(det):
    """Each object's colour moved to the other object: whole-image CLIP sees the same bag of
    words; the region report flags the moved colour words, each with the box of its own object
    (the swapped arrangement would explain the colours too, so the placement words are
    flagged as well: CLIP cannot tell which of the two happened)."""
    flagged = 0
    for a, b in SCENES:
        img = render_scene(_scene(a, b))
        true = f"a {a[0]} {a[1]} on the left and a {b[0]} {b[1]} on the right"
        foil = f"a {b[0]} {a[1]} on the left and a {a[0]} {b[1]} on the right"
        rep_t, rep_f = det.detect_regions([img, img], [true, foil])
        assert isinstance(rep_f, RegionReport) and rep_f.regional
        assert rep_t.score > rep_f.score
        assert not any(w.misaligned for w in rep_t.words if w.reason == "attribute")
        for w in rep_f.words:
            if w.word in (a[0], b[0]) and w.reason == "attribute" and w.misaligned:
                # the box is its object's half: the first phrase's object is on the left
                assert ((w.box[0] + w.box[2]) / 2 < 16) == (w.phrase == 0)
                flagged += 1
    assert flagged >= 5  # of the 8 moved colour words (5 measured; whole-image flags fewer)


def test_swapped_relation_flags_the_relation_word(det):
    flagged = 0
    for a, b in SCENES:
        img = render_scene(_scene(a, b, axis="y"))
        true = f"a {a[0]} {a[1]} above a {b[0]} {b[1]}"
        swap = f"a {a[0]} {a[1]} below a {b[0]} {b[1]}"
        rep_t, rep_s = det.detect_regions([img, img], [true, swap])
        rel_t, rel_s = rep_t.relations[0], rep_s.relations[0]
        assert rel_t.margin > 0 and rel_t.holds
        assert rel_s.margin < 0 and rel_s.holds is False
        word = next(w for w in rep_s.words if w.word == "below")
        flagged += word.misaligned and word.reason == "relation"
        assert rep_t.score > rep_s.score
    assert flagged == len(SCENES)


def test_missing_object_is_flagged_missing(det):
    scene = Scene((ShapeObject("red", "circle", "large", 8.0, 16.0, 11.0),), axis=None)
    img = render_scene(scene)
    rep = det.detect_regions([img], ["a red circle on the left and a white cross on the right"])[0]
    cross = rep.phrases[1]
    assert not cross.found and rep.missing == ["a white cross"]
    words = {w.word: w for w in rep.words}
    assert words["cross"].misaligned and words["cross"].reason == "missing"
    assert words["white"].misaligned
    assert rep.score == pytest.approx(cross.cosine) and rep.score < rep.phrases[0].cosine - 0.2


def test_one_phrase_gives_the_whole_image_result_unchanged(det, images):
    img, _ = images[0]
    cap = "a small red circle"
    whole = det(img, cap)
    (reg,) = det.detect_regions([img], [cap])
    assert not reg.regional and reg.phrases == [] and reg.relations == []
    assert [(w.word, w.score, w.misaligned) for w in reg.words] == [
        (w.word, w.score, w.misaligned) for w in whole.words
    ]
    assert reg.clip_score == whole.clip_score and reg.f_clip_score == whole.f_clip_score
    assert reg.score == pytest.approx(whole.cosine)
    assert all(w.box is None and w.reason == "image" for w in reg.words)


def test_report_fields_and_json(det):
    img = render_scene(_scene(("red", "circle"), ("blue", "square")))
    cap = "a red circle to the left of a blue square"
    (rep,) = det.detect_regions([img], [cap])
    d = json.loads(json.dumps(rep.to_dict()))
    assert d["score"] == pytest.approx(rep.score) and len(d["phrases"]) == 2
    for w in rep.words:
        assert cap[w.start : w.end] == w.word
        assert w.reason in ("attribute", "relation", "missing", "image")
        if w.box is not None:
            x0, y0, x1, y1 = w.box
            assert 0 <= x0 < x1 <= 32 and 0 <= y0 < y1 <= 32
    assert {w.word: w.reason for w in rep.words}["left"] == "relation"
    assert {w.word: w.reason for w in rep.words}["red"] == "attribute"
    assert math.isfinite(rep.f_clip_score) and rep.clip_score == pytest.approx(
        det(img, cap).clip_score
    )


def test_tensor_form_matches_the_image_form(det):
    img = render_scene(_scene(("red", "circle"), ("blue", "square")))
    cap = "a red circle to the left of a blue square"
    (a,) = det.detect_regions([img], [cap])
    (b,) = det.score_regions(_tensor(img), [cap])
    assert a.score == pytest.approx(b.score, abs=1e-6)
    assert [w.misaligned for w in a.words] == [w.misaligned for w in b.words]


def test_caller_boxes_are_the_regions(det):
    img = render_scene(_scene(("red", "circle"), ("blue", "square")))
    boxes = [(2, 10, 14, 22), (18, 10, 30, 22), (0, 0, 6, 6)]
    (rep,) = det.detect_regions([img], ["a red circle to the left of a blue square"], boxes=[boxes])
    assert [p.box for p in rep.phrases] == [tuple(map(float, b)) for b in boxes[:2]]
    assert rep.relations[0].holds


@pytest.mark.parametrize("proposals", ["windows", "partitions"])
@pytest.mark.parametrize("isolation", ["fill", "blur", "crop"])
def test_every_proposal_and_isolation_runs(det, proposals, isolation):
    img = render_scene(_scene(("red", "circle"), ("blue", "square")))
    cfg = RegionConfig(proposals=proposals, isolation=isolation)
    true, swap = det.detect_regions(
        [img, img],
        ["a red circle to the left of a blue square", "a red circle to the right of a blue square"],
        config=cfg,
    )
    assert true.relations[0].margin is not None
    if proposals == "partitions":  # the same arrangements, stated and reversed
        assert true.relations[0].margin == pytest.approx(-swap.relations[0].margin, abs=1e-5)
    if isolation != "blur":  # a blurred rest still shows the other object's colour to CLIP
        assert true.relations[0].margin > 0 > swap.relations[0].margin


def test_three_objects_use_windows(det):
    img = render_scene(_scene(("red", "circle"), ("blue", "square")))
    (rep,) = det.detect_regions([img], ["a red circle, a blue square and a green cross"])
    assert len(rep.phrases) == 3
    for i in range(3):
        for j in range(i + 1, 3):
            assert overlap(rep.phrases[i].box, rep.phrases[j].box) <= 0.3 + 1e-9


def test_bad_region_config_is_a_clear_error():
    with pytest.raises(ValueError, match="proposals must be one of"):
        RegionConfig(proposals="sam")
    with pytest.raises(ValueError, match="detector_model"):
        RegionConfig(proposals="detector")


def test_zero_shot_detector_proposals_from_a_saved_owlvit(det, tmp_path):
    """Real loading code (transformers' zero-shot-object-detection pipeline) on a tiny random
    OWL-ViT built from its config and saved with save_pretrained."""
    from transformers import (
        CLIPTokenizer,
        OwlViTConfig,
        OwlViTForObjectDetection,
        OwlViTImageProcessor,
        OwlViTProcessor,
    )

    from shapesworld.pipelines import pipeline_path

    tok = CLIPTokenizer.from_pretrained(pipeline_path() / "tokenizer")
    small = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    cfg = OwlViTConfig(
        text_config=dict(vocab_size=tok.vocab_size, max_position_embeddings=16, **small),
        vision_config=dict(image_size=32, patch_size=8, **small),
        projection_dim=16,
    )
    torch.manual_seed(0)
    OwlViTForObjectDetection(cfg).save_pretrained(tmp_path)
    size = {"height": 32, "width": 32}
    OwlViTProcessor(
        image_processor=OwlViTImageProcessor(size=size, crop_size=size), tokenizer=tok
    ).save_pretrained(tmp_path)
    img = render_scene(_scene(("red", "circle"), ("blue", "square")))
    cfg = RegionConfig(proposals="detector", detector_model=str(tmp_path), detector_threshold=0.0)
    (rep,) = det.detect_regions([img], ["a red circle to the left of a blue square"], config=cfg)
    assert rep.regional and len(rep.phrases) == 2
    for p in rep.phrases:  # the detector's boxes, clipped to the image
        assert 0 <= p.box[0] < p.box[2] <= 32 and 0 <= p.box[1] < p.box[3] <= 32


def test_zero_shot_detector_that_cannot_load_is_a_clear_error(det, tmp_path):
    from feedback import ModelLoadError

    cfg = RegionConfig(proposals="detector", detector_model=str(tmp_path / "nope"))
    img = render_scene(_scene(("red", "circle"), ("blue", "square")))
    with pytest.raises(ModelLoadError, match="zero-shot detector"):
        det.detect_regions([img], ["a red circle to the left of a blue square"], config=cfg)


def test_a_prompt_of_many_objects_stays_bounded(det):
    """Twelve phrases: the assignment search is capped (MAX_ARRANGEMENTS), not 8**12."""
    import time

    from feedback.regions.scoring import MAX_ARRANGEMENTS

    img = render_scene(_scene(("red", "circle"), ("blue", "square")))
    cap = ", ".join(f"a {c} circle" for c in ["red", "blue", "green", "white"] * 3)
    t = time.perf_counter()
    (rep,) = det.detect_regions([img], [cap])
    assert len(rep.phrases) == 12 and time.perf_counter() - t < 60
    assert MAX_ARRANGEMENTS <= 20_000
