"""The shipped CLIPs (`shapes-tiny`; `shapes-tiny-gen` tuned for generated images;
`shapes-tiny-gen2` tuned further to rank a prompt's generated images) load offline by name and
actually find foiled words."""

from __future__ import annotations

import json

import pytest

from feedback import MisalignmentDetector, recommended_settings, shipped_models
from feedback.eval.evaluate import run_benchmark
from generation.cli import main
from shapesworld.benchmark import load_shapes_foil

SHIPPED = ["shapes-tiny", "shapes-tiny-gen", "shapes-tiny-gen2"]


@pytest.fixture(scope="module", params=SHIPPED)
def name(request):
    return request.param


@pytest.fixture(scope="module")
def det(name):
    assert name in shipped_models()
    return MisalignmentDetector.from_pretrained(name)


def test_loads_by_name_with_card_recommendations(name, det):
    rec = recommended_settings(name)
    assert det.config.layers == rec["layers"] and det.config.threshold == rec["threshold"]
    assert type(det.backend).__name__ == "OpenClipBackend"
    # Explicit options still win over the card.
    assert MisalignmentDetector.from_pretrained(name, layers=3).config.layers == 3


def test_cli_shipped_model_runs_offline_by_name(tmp_path, capsys):
    """The testbed's detector is named (the CLI's default is the real CLIP, which this
    offline machine cannot download: tests/test_contract.py)."""
    ex = next(iter(load_shapes_foil(n=1)))
    path = tmp_path / "img.png"
    ex.image.save(path)
    assert main(["check", str(path), ex.caption, "--model", "shapes-tiny", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["caption"] == ex.caption and len(d["words"]) == len(ex.caption.split())


def test_localizes_color_and_shape_foils_far_above_chance(det):
    # 40 held-out items per kind; chance (random content word) is about 1/4 to 1/3.
    samples = [s for s in load_shapes_foil(n=160) if s.kind in ("color", "shape")]
    r = run_benchmark(det, samples, benchmark="shapes-foil", progress=False)
    assert r.per_kind["color"]["la"] >= 0.75, r.per_kind
    assert r.per_kind["shape"]["la"] >= 0.6, r.per_kind
    # Foiled captions get the more negative F-CLIPScore.
    assert r.metrics["ap_fclipscore"] >= 0.85, r.metrics


def test_calibrated_threshold_rarely_flags_correct_captions(name, det):
    """The card's eps was calibrated for <= 10% false flags on the validation split; on the
    separate test split the rate stays near that, and foil words are still found."""
    from feedback.eval.calibration import calibrate_threshold
    from feedback.registry import shipped_model

    card = json.loads((shipped_model(name).path / "clip4dm.json").read_text())
    assert card["calibration"]["target_false_flag_rate"] == 0.1
    samples = list(load_shapes_foil(n=300))  # test split
    reports = det.detect([s.image for s in samples], [s.caption for s in samples])
    originals = [r for s, r in zip(samples, reports) if s.is_original]
    flagged = sum(bool(r.misaligned_words) for r in originals) / len(originals)
    assert flagged <= 0.15, flagged
    cal = calibrate_threshold(samples, reports, rate=0.1)
    assert cal.foil_recall >= 0.5 and cal.paper_false_flag_rate > 0.9


def test_threshold_for_false_flag_rate_is_exact():
    from feedback.eval.calibration import threshold_for_false_flag_rate

    lowest = [-0.5, -0.4, -0.3, -0.2, -0.1, -0.05, -0.04, -0.03, -0.02, -0.01]
    eps = threshold_for_false_flag_rate(lowest, 0.2)
    assert sum(v < eps for v in lowest) == 2 and eps == -0.3
    assert threshold_for_false_flag_rate(lowest, 0.0) == -0.5  # nothing flagged
    assert threshold_for_false_flag_rate([0.1, 0.2], 0.5) == 0.0  # never positive
    with pytest.raises(ValueError):
        threshold_for_false_flag_rate(lowest, 1.0)


@pytest.mark.slow
def test_generated_image_detector_catches_more_at_the_same_false_alarm_rate():
    """The README's claim for `shapes-tiny-gen`: on images the shipped pipeline generates
    (prompts neither detector nor pipeline trained on), at each detector's loop eps (set for
    10% false alarms on right images), it flags more of the wrong words than `shapes-tiny`."""
    import torch

    from feedback.detector import reports_from_output
    from shapesworld.pipelines import judge_tensor, load_pipeline, loop_threshold, prompt_set

    pipe = load_pipeline()
    prompts = [p.text for p in prompt_set(80, n_objects=2, seed=777)]
    gens = [torch.Generator().manual_seed(i) for i in range(len(prompts))]
    with torch.no_grad():
        imgs = pipe(
            prompts, num_inference_steps=20, guidance_scale=4.0, generator=gens, output_type="pt"
        ).images
    verdicts = [judge_tensor(im, p).words for im, p in zip(imgs, prompts)]
    caught = {}
    for name in SHIPPED:
        eps = loop_threshold(detector=name)
        assert eps is not None and eps < 0
        d = MisalignmentDetector.from_pretrained(name, threshold=eps)
        reports = reports_from_output(d.score(imgs, prompts))
        hits = wrong = 0
        for rep, vs in zip(reports, verdicts):
            for w, v in zip(rep.words, vs):
                if v.correct is False:
                    wrong += 1
                    hits += w.misaligned
        caught[name] = hits / wrong
    assert min(caught["shapes-tiny-gen"], caught["shapes-tiny-gen2"]) > caught["shapes-tiny"], (
        caught
    )


def test_generate_and_judge_seeds_each_prompt_whatever_the_batching():
    import torch

    from shapesworld.pipelines import generate_and_judge, load_pipeline

    pipe = load_pipeline()
    prompts = ["a red circle", "a blue square to the left of a green cross", "a small star"]
    one = generate_and_judge(pipe, prompts, seed=7, steps=2, batch=1)
    two = generate_and_judge(pipe, prompts, seed=7, steps=2, batch=2)
    assert [p for _, p, _ in one] == prompts
    for (a, _, ja), (b, _, jb) in zip(one, two):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
        assert ja.all_correct == jb.all_correct
    other = generate_and_judge(pipe, prompts[:1], seed=8, steps=2)
    assert not torch.equal(other[0][0], one[0][0])


def test_every_shipped_lora_loads_with_stock_diffusers_and_has_a_card():
    """Each folder under shapesworld/weights whose name contains "lora": stock
    `load_lora_weights` reads it, it changes the pipeline's output, and its card states the
    recipe, the command, the compute and the held-out figures."""
    import json
    from pathlib import Path

    import torch

    from shapesworld.pipelines import load_pipeline, lora_path, shipped_loras

    root = Path(__file__).resolve().parents[1] / "shapesworld" / "weights"
    folders = sorted(p for p in root.iterdir() if "lora" in p.name)
    assert folders and [f"shapes-sd-tiny-lora-{n}" for n in shipped_loras()] == [
        p.name for p in folders
    ]
    gen = dict(num_inference_steps=4, output_type="pt")
    base = load_pipeline()(
        ["a small red circle"], generator=torch.Generator().manual_seed(0), **gen
    )
    for folder in folders:
        card = json.loads((folder / "card.json").read_text())
        assert {"recipe", "command", "compute", "held_out"} <= set(card)
        assert (folder / "README.md").is_file()
        pipe = load_pipeline()
        pipe.load_lora_weights(str(folder))
        out = pipe(["a small red circle"], generator=torch.Generator().manual_seed(0), **gen)
        assert not torch.equal(out.images, base.images), folder.name
        assert lora_path(folder.name.split("-lora-")[1]) == folder
