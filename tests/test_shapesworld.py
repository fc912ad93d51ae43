"""ShapesWorld: deterministic scenes, the pixel oracle's accuracy, and foils that contradict."""

from __future__ import annotations

import numpy as np
import pytest

from shapesworld import (
    Degradation,
    describe,
    foil_set,
    judge,
    make_foil,
    parse_caption,
    render_scene,
    sample_scene,
    swap_objects,
)
from shapesworld.vocabulary import COLORS, SHAPES


def test_rendering_is_deterministic():
    a = render_scene(sample_scene(np.random.default_rng(3)))
    b = render_scene(sample_scene(np.random.default_rng(3)))
    assert np.array_equal(np.asarray(a), np.asarray(b)) and a.size == (32, 32)


def test_vocabulary_sizes():
    assert len(COLORS) >= 8 and len(SHAPES) >= 4


@pytest.mark.parametrize("degrade", [False, True])
def test_oracle_word_accuracy(degrade):
    rng = np.random.default_rng(11)
    deg = Degradation(p=1.0)
    total = right = 0
    for _ in range(400):
        scene = sample_scene(rng)
        cap = describe(scene, rng)
        img = render_scene(scene)
        if degrade:
            img = deg(img, rng)
        for w in judge(img, cap.text).words:
            if w.kind:
                total += 1
                right += w.correct is True
    acc = right / total
    assert acc >= (0.98 if degrade else 0.99), acc


def test_oracle_flags_exactly_the_foil_word():
    for ex in foil_set(80):
        j = judge(ex.image(), ex.foil.foil)
        assert j.wrong_words == [ex.foil.word_index], (ex.foil, j.objects)


def test_oracle_on_64px_images():
    rng = np.random.default_rng(5)
    for _ in range(40):
        scene = sample_scene(rng)
        cap = describe(scene, rng)
        assert judge(render_scene(scene, 64), cap.text).all_correct


def test_foils_swap_one_word_of_the_asked_kind():
    rng = np.random.default_rng(0)
    for kind in ("color", "shape", "size", "position"):
        scene = sample_scene(rng, 2)
        while True:
            cap = describe(scene, rng)
            if any(w.kind == kind for w in cap.words):
                break
        f = make_foil(cap, rng, kind)
        a, b = cap.text.split(), f.foil.split()
        diff = [i for i, (x, y) in enumerate(zip(a, b)) if x != y]
        assert diff == [f.word_index] and f.foil[f.start : f.end] == f.foil_word
    with pytest.raises(ValueError, match="no size word"):
        make_foil(describe(scene, np.random.default_rng(1), p_size=0.0), rng, "size")


def test_held_out_set_is_balanced_and_stable():
    fs = foil_set(40)
    assert [e.foil.kind for e in fs[:4]] == ["color", "shape", "size", "position"]
    assert [e.foil.foil for e in fs] == [e.foil.foil for e in foil_set(40)]


def test_parse_and_swap():
    words, phrases, rels = parse_caption("a small red circle to the left of a blue square")
    assert len(phrases) == 2 and rels[0].relation == "left" and rels[0].other == 1
    # Find a two-object caption whose objects differ in color: the swap must then exist and
    # give each object the other's color (and every other attribute word).
    for seed in range(100):
        cap = describe(sample_scene(np.random.default_rng(seed), 2), np.random.default_rng(seed))
        colors = {w.obj: w.text for w in cap.words if w.kind == "color"}
        if len(colors) == 2 and len(set(colors.values())) == 2:
            break
    else:
        pytest.fail("no two-color caption in 100 seeds")
    assert cap.text == " ".join(w.text for w in cap.words)
    swapped = swap_objects(cap)
    assert swapped is not None and swapped != cap.text
    out = swapped.split()
    (a, ca), (b, cb) = sorted(colors.items())
    for i, w in enumerate(cap.words):
        if w.kind == "color":
            assert out[i] == (cb if w.obj == a else ca)
        elif w.kind in (None, "position"):
            assert out[i] == w.text


def test_oracle_words_line_up_with_detector_words():
    from feedback.words import split_words

    rng = np.random.default_rng(5)
    for i in range(40):
        scene = sample_scene(rng)
        text = describe(scene, rng).text
        # punctuation the way users write it: commas after phrases, a final period or "..."
        text = text.replace(" and ", ", and ", 1) + (".", "...", " .", "")[i % 4]
        verdicts = judge(render_scene(scene, 32), text).words
        det = split_words(text)
        assert [(v.word, v.start, v.end) for v in verdicts] == [
            (w.text, w.start, w.end) for w in det
        ]
        assert all(v.correct is None for v in verdicts if v.word in {".", ","})
        assert judge(render_scene(scene, 32), text).all_correct


def test_generated_images_get_true_captions_and_their_failed_prompt_as_negative():
    from shapesworld.captions import caption_from_text
    from shapesworld.generated import label_generated, scene_from_objects

    rng = np.random.default_rng(3)
    for ex in foil_set(30, seed=9):
        img = ex.image()
        right = label_generated(img, ex.caption.text, rng)
        assert right.right and right.true_caption == ex.caption.text and not right.wrong_kinds
        wrong = label_generated(img, ex.foil.foil, rng)
        assert not wrong.right and ex.foil.kind in wrong.wrong_kinds
        # the caption read from the pixels is true of the image, by the oracle
        assert judge(img, wrong.true_caption).all_correct
        cap = caption_from_text(wrong.true_caption)
        assert cap.text == wrong.true_caption
        assert scene_from_objects(judge(img, ex.caption.text).objects, 32) is not None
    # objects the grammar cannot describe
    assert scene_from_objects((), 32) is None


def test_pool_batch_puts_the_failed_prompt_first(tmp_path):
    from shapesworld.data import pool_batch
    from shapesworld.generated import GeneratedExample

    ex = foil_set(2, seed=4)
    images = np.stack([np.asarray(e.image()) for e in ex])
    labels = [
        GeneratedExample(ex[0].foil.foil, False, [ex[0].foil.kind], ex[0].caption.text),
        GeneratedExample(ex[1].caption.text, True, [], ex[1].caption.text),
    ]
    b = pool_batch(np.random.default_rng(0), images, labels, 16, foils_per_image=3, p_template=0)
    assert b.images.shape == (16, 3, 32, 32)
    for cap, foils, kinds in zip(b.captions, b.foils, b.foil_kinds):
        if cap.rstrip(" .") == ex[0].caption.text:
            assert kinds[0] == "generated" and foils[0].rstrip(" .") == ex[0].foil.foil
        else:
            assert "generated" not in kinds and cap.rstrip(" .") == ex[1].caption.text
        assert cap not in foils


def test_prompt_groups_keep_mixed_groups_and_group_batch_ranks_them():
    import torch

    from shapesworld.build.contrastive import group_ranking_loss
    from shapesworld.data import group_batch, prompt_groups
    from shapesworld.generated import GeneratedExample

    def ex(prompt, right):
        return GeneratedExample(prompt, right, [] if right else ["color"], None)

    labels = [ex("a red circle", r) for r in (True, False, False)]
    labels += [ex("a blue square", r) for r in (True, True, True)]  # all right: not mixed
    labels += [ex("a green cross", r) for r in (False, False, False, True)]  # longer group
    assert prompt_groups(labels) == [(0, 1, 2), (6, 7, 8, 9)]
    images = np.zeros((len(labels), 32, 32, 3), np.uint8)
    images[:, 0, 0, 0] = np.arange(len(labels))  # which image went where
    b = group_batch(np.random.default_rng(0), images, labels, prompt_groups(labels), 8)
    assert b.images.shape == (24, 3, 32, 32) and b.right.shape == (8, 3)
    assert all(t.startswith("A photo depicts a ") for t in b.texts)
    assert (b.right.any(1) & (~b.right).any(1)).all()  # every row stays mixed
    with pytest.raises(ValueError, match="both a right and a wrong"):
        group_batch(np.random.default_rng(0), images, labels, [], 2)

    # The loss is low when the right image is the closest to its prompt, high when a wrong one is
    prompt = torch.nn.functional.normalize(torch.randn(1, 8), dim=-1)
    other = torch.nn.functional.normalize(torch.randn(1, 8), dim=-1)
    right = torch.tensor([[True, False]])
    scale = torch.tensor(np.log(100.0))
    good, s_good = group_ranking_loss(torch.cat([prompt, other]), prompt, scale, right)
    bad, s_bad = group_ranking_loss(torch.cat([other, prompt]), prompt, scale, right)
    assert good < 0.1 < bad and s_good["group_top_right"] == 1.0 and s_bad["group_top_right"] == 0
