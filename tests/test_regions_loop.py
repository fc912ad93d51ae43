"""The loop, the verifier card, the reward and the CLI on region-aware reports."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from PIL import Image

from feedback import FeedbackReward, MisalignmentDetector, RewardConfig, Verifier
from feedback.regions import RegionReport
from feedback.verifier import FEATURES, image_features
from generation import FeedbackPipeline, LoopConfig
from generation.cli import main
from generation.verifier import find_card, flagged_kind
from shapesworld import render_scene
from shapesworld.pipelines import LOOP_DETECTOR, load_pipeline, loop_verifier_path
from shapesworld.scenes import Scene, ShapeObject

TWO = "a small red circle to the left of a blue square"
GEN = dict(num_inference_steps=4, guidance_scale=4.0)


@pytest.fixture(scope="module")
def pipe():
    return load_pipeline()


@pytest.fixture(scope="module")
def det():
    return MisalignmentDetector.from_pretrained(LOOP_DETECTOR)


def _scene_image():
    scene = Scene(
        (
            ShapeObject("red", "circle", "large", 8.0, 16.0, 11.0),
            ShapeObject("blue", "square", "large", 24.0, 16.0, 11.0),
        ),
        axis="x",
    )
    return render_scene(scene)


def test_loop_selects_by_the_region_score_without_a_card(pipe, det):
    fb = FeedbackPipeline(pipe, det, LoopConfig(strategy="best_of_n", max_images=4), verifier=None)
    h = fb(TWO, **GEN).history[0]
    reps = h.rounds[0].reports
    assert all(isinstance(r, RegionReport) and r.regional for r in reps)
    best = max(range(4), key=lambda k: (reps[k].score, reps[k].clip_score, -k))
    assert h.best == (0, best)
    # one object, nothing placed: the whole-image report, selection by F-CLIPScore as before
    h1 = fb("a small red circle", **GEN).history[0]
    assert not any(getattr(r, "regional", False) for r in h1.rounds[0].reports)


def test_regions_off_gives_whole_image_reports(pipe, det):
    cfg = LoopConfig(strategy="best_of_n", max_images=2, regions=False)
    h = FeedbackPipeline(pipe, det, cfg, verifier=None)(TWO, **GEN).history[0]
    assert not any(isinstance(r, RegionReport) for r in h.rounds[0].reports)


def test_the_card_beside_the_pipeline_is_found_and_sets_the_eps(pipe, det, caplog):
    import generation.verifier as gv

    gv._say_once.cache_clear()  # said once per process: say it again here
    assert find_card(pipe) == loop_verifier_path()
    card = Verifier.load(loop_verifier_path())
    assert card.detector == LOOP_DETECTOR and "region_score" in card.features
    with caplog.at_level("WARNING", logger="generation.verifier"):
        fb = FeedbackPipeline(pipe, det, LoopConfig(max_images=2))
    assert "judges at its eps" in caplog.text
    assert fb.verifier is not None and fb.detector.config.threshold == card.threshold
    assert fb.detector.backend is det.backend  # the same model, only the eps differs
    h = fb(TWO, **GEN).history[0]
    assert len(h.rounds[0].p_right) == 2


def test_a_card_for_another_detector_is_not_used(pipe, tiny_open_clip_dir, caplog):
    other = MisalignmentDetector.from_pretrained(str(tiny_open_clip_dir))
    with caplog.at_level("WARNING", logger="generation.verifier"):
        fb = FeedbackPipeline(pipe, other, LoopConfig(max_images=2))
    assert "runs without a card" in caplog.text
    assert fb.verifier is None


def test_region_features_reach_the_card(det):
    img = _scene_image()
    reps = det.detect_regions([img, img], [TWO, "a small red circle to the right of a blue square"])
    rows = image_features(reps, 0.0025)
    i = FEATURES.index
    assert rows[0][i("region_score")] == pytest.approx(reps[0].score)
    assert rows[1][i("relation_margin")] < 0 < rows[0][i("relation_margin")]
    assert rows[1][i("region_score_vs_best")] < 0 == rows[0][i("region_score_vs_best")]
    # a whole-image report: its cosine, no relation, nothing missing
    whole = det(img, TWO)
    row = image_features([whole], 0.0025)[0]
    assert row[i("region_score")] == pytest.approx(whole.cosine) and row[i("n_missing")] == 0


def test_flagged_kind_reads_the_region_reason(det):
    img = _scene_image()
    (rep,) = det.detect_regions([img], ["a small red circle to the right of a blue square"])
    assert rep.relations[0].holds is False
    assert flagged_kind(rep, rep.caption) == "relation"


def test_region_reward(det):
    from torchvision.transforms.functional import pil_to_tensor

    img = torch.stack([pil_to_tensor(_scene_image()).float() / 255] * 3)
    prompts = [
        TWO.replace("small ", "large "),
        "a large red circle to the right of a blue square",
        "a large red circle",
    ]
    fr = FeedbackReward(det, RewardConfig(regions=True, word_clip=3.0))
    rewards, info = fr(img, prompts)
    regs = det.score_regions(img, prompts)
    assert rewards.tolist() == pytest.approx([r.score for r in regs], abs=1e-5)
    assert rewards[0] > rewards[1]  # the swapped relation pulls the reward down
    assert rewards[2] == pytest.approx(det(_scene_image(), prompts[2]).cosine, abs=1e-5)
    assert info.word_rewards.abs().max() <= 3.0 + 1e-6
    right = [w.word for w in info.regions[1].words].index("right")
    assert info.word_rewards[1, right] == pytest.approx(-3.0)
    json.dumps(info.to_dict())
    plain, _ = FeedbackReward(det)(img, prompts)  # the default stays the whole-image reward
    assert not torch.allclose(plain, rewards)


def test_cli_check_regions_json_and_figure(tmp_path, capsys):
    path = tmp_path / "scene.png"
    _scene_image().save(path)
    fig = tmp_path / "fig.png"
    cap = "a red circle to the right of a blue square"
    argv = ["check", str(path), cap, "--model", LOOP_DETECTOR, "--regions"]
    assert main(argv + ["--json", "--figure", str(fig)]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["regional"] and d["settings"]["regions"] and len(d["phrases"]) == 2
    right = next(w for w in d["words"] if w["word"] == "right")
    assert right["misaligned"] and right["reason"] == "relation" and len(right["box"]) == 4
    assert d["relations"][0]["holds"] is False
    # the figure draws the flagged word's box on the image in the word's colour
    from feedback.figures import PALETTE

    im = Image.open(fig).convert("RGB")
    colours = {im.getpixel((x, y)) for x in range(0, 266) for y in range(0, 266)}
    assert PALETTE[0] in colours
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "relation 'to the right of': SWAPPED" in out and "[relation, box" in out


def test_calibrate_fits_the_card_on_region_reports(tmp_path, det, capsys):
    rows = []
    img = _scene_image()
    for g, (cap, right) in enumerate(
        [
            (TWO.replace("small ", ""), True),
            ("a red circle to the right of a blue square", False),
            ("a blue circle to the left of a red square", False),
            ("a red circle", True),
        ]
        * 3
    ):
        name = f"im{g}.png"
        img.save(tmp_path / name)
        rows.append({"image": name, "caption": cap, "right": right, "group": g // 2})
    data = tmp_path / "labels.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    card = tmp_path / "card.json"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = main(
            [
                "calibrate",
                "--data",
                str(data),
                "--model",
                LOOP_DETECTOR,
                "--threshold",
                "-0.0025",
                "--verifier",
                str(card),
            ]
        )
    assert code == 0
    out = capsys.readouterr().out
    assert "region score alone: AUC" in out
    ver = Verifier.load(card)
    assert "region_score" in ver.features and ver.stats["region_score_auc"] > 0.5


def test_score_manifest_with_regions_resumes(tmp_path):
    img = tmp_path / "a.png"
    _scene_image().save(img)
    rows = [
        {"id": "two", "image": str(img), "caption": "a red circle to the right of a blue square"},
        {"id": "one", "image": str(img), "caption": "a red circle"},
    ]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows[:1]))
    out = tmp_path / "r.jsonl"
    argv = ["score", "--data", str(manifest), "--out", str(out), "--model", LOOP_DETECTOR]
    assert main(argv + ["--regions"]) == 0
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(argv + ["--regions"]) == 0  # resumes: only the new row is scored
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["id"] for r in recs] == ["two", "one"]
    assert recs[0]["regional"] and recs[0]["relations"][0]["holds"] is False
    assert not recs[1]["regional"] and recs[1]["phrases"] == []


def test_eval_shapes_foil_with_regions_splits_by_object_count(capsys):
    argv = ["eval", "--benchmark", "shapes-foil", "--n", "30", "--model", "shapes-tiny"]
    assert main(argv + ["--regions"]) == 0
    out = capsys.readouterr().out
    assert "1-object" in out and "2-object" in out
