"""Search at equal compute: the step budget (`LoopConfig.max_steps`) and the preview
strategy (few-step previews of many seeds, the best finished at full steps)."""

from __future__ import annotations

import pytest
import torch

from feedback import MisalignmentDetector
from generation import EarlyReject, FeedbackPipeline, LoopConfig, Preview
from generation.selection import rank_key
from generation.strategies.preview import preview_plan
from shapesworld.pipelines import LOOP_DETECTOR, load_pipeline

PROMPT = "a small red circle to the left of a blue square"


@pytest.fixture(scope="module")
def pipe():
    return load_pipeline()


@pytest.fixture(scope="module")
def det():
    return MisalignmentDetector.from_pretrained(LOOP_DETECTOR)


def test_preview_plan_spends_the_budget():
    assert preview_plan(20, 80, 2, None) == (10, 4, 2)  # 10 x 4 + 2 x 20 = 80
    assert preview_plan(20, 104, 2, None) == (16, 4, 2)
    assert preview_plan(20, 80, 2, 8) == (5, 8, 2)
    assert preview_plan(4, 16, 2, None) == (4, 2, 2)
    assert preview_plan(3, 12, 2, None) is None  # a few-step schedule: previews cannot pay
    assert preview_plan(20, 40, 2, None) is None  # no steps left for previews


def test_preview_finishes_the_best_previews_at_full_steps(pipe, det):
    cfg = LoopConfig(strategy="preview", max_steps=80, seed=5, stop_when_aligned=False)
    h = FeedbackPipeline(pipe, det, cfg, verifier=None)(
        PROMPT, num_inference_steps=20, guidance_scale=4.0, output_type="pt"
    ).history[0]
    prev, fin = h.rounds
    assert prev.preview and prev.fix == "preview" and not fin.preview and fin.fix == "finish"
    assert prev.seeds == list(range(5, 15)) and prev.steps == 40 and fin.steps == 40
    assert h.num_steps == 80 and h.best[0] == 1  # a finished image is kept, never a preview
    top = sorted(range(10), key=lambda i: (rank_key(prev.reports[i]), -i), reverse=True)[:2]
    assert fin.seeds == [prev.seeds[i] for i in top]
    # the finished images are the plain full-step call at their seeds, bit for bit
    plain = pipe(
        PROMPT,
        num_images_per_prompt=2,
        num_inference_steps=20,
        guidance_scale=4.0,
        generator=[torch.Generator().manual_seed(s) for s in fin.seeds],
        output_type="pt",
    ).images
    assert torch.equal(fin.images, plain.float())
    assert h.to_dict()["num_steps"] == 80


def test_preview_falls_back_to_best_of_n_where_previews_cannot_pay(pipe, det):
    cfg = LoopConfig(strategy="preview", max_images=4, stop_when_aligned=False)
    h = FeedbackPipeline(pipe, det, cfg, verifier=None)(
        PROMPT, num_inference_steps=3, guidance_scale=4.0
    ).history[0]
    assert [r.fix for r in h.rounds] == ["plain"] and len(h.rounds[0].seeds) == 4
    assert "cannot pay" in h.rounds[0].extra["preview"]
    assert h.stopped in ("max_steps", "max_images") and h.num_steps == 12


def test_the_step_budget_bounds_every_strategy(pipe, det):
    cfg = LoopConfig(strategy="resample", max_images=8, max_steps=60, stop_when_aligned=False)
    h = FeedbackPipeline(pipe, det, cfg, verifier=None)(
        PROMPT, num_inference_steps=20, guidance_scale=4.0
    ).history[0]
    assert h.num_images == 3 and h.num_steps == 60 and h.stopped == "max_steps"


def test_preview_runs_on_the_generic_adapter(pipe, det):
    cfg = LoopConfig(strategy="preview", max_steps=40, stop_when_aligned=False)
    h = FeedbackPipeline(pipe, det, cfg, adapter="generic", verifier=None)(
        PROMPT, num_inference_steps=10, guidance_scale=4.0
    ).history[0]
    assert [r.fix for r in h.rounds] == ["preview", "finish"] and h.num_steps == 40


@pytest.mark.parametrize(
    "bad",
    [
        {"max_steps": 0},
        {"strategy": lambda: Preview(steps=-1)},
        {"strategy": lambda: Preview(keep=0)},
        {"strategy": lambda: EarlyReject(at=0)},
    ],
)
def test_bad_budgets_are_refused(bad):
    with pytest.raises(ValueError, match="must be a positive integer"):
        LoopConfig(**{k: v() if callable(v) else v for k, v in bad.items()})


def test_early_reject_stops_candidates_mid_run_and_finishes_the_rest_exactly(pipe, det):
    calls = []

    def user_cb(p, i, t, kwargs):  # the user's own callback still sees every step it ran
        calls.append(i)
        return kwargs

    cfg = LoopConfig(strategy="early_reject", max_steps=80, seed=5, stop_when_aligned=False)
    h = FeedbackPipeline(pipe, det, cfg, verifier=None)(
        PROMPT,
        num_inference_steps=20,
        guidance_scale=4.0,
        output_type="pt",
        callback_on_step_end=user_cb,
    ).history[0]
    stopped = [r for r in h.rounds if r.preview]
    done = [r for r in h.rounds if not r.preview]
    assert stopped and done and h.num_steps <= 80
    assert all(r.fix == "rejected" and r.steps == 4 and len(r.seeds) == 1 for r in stopped)
    assert all(r.fix == "candidate" and r.steps == 20 for r in done)
    # the first candidates (the look-only phase) are stopped; seeds follow best-of-N's
    assert h.rounds[0].preview and [r.seeds[0] for r in h.rounds] == list(
        range(5, 5 + len(h.rounds))
    )
    assert not h.rounds[h.best[0]].preview  # a finished image is kept, never an estimate
    assert len(calls) == 4 * len(stopped) + 20 * len(done)
    # a finished candidate is the plain full-step call at its seed, bit for bit
    plain = pipe(
        PROMPT,
        num_inference_steps=20,
        guidance_scale=4.0,
        generator=torch.Generator().manual_seed(done[0].seeds[0]),
        output_type="pt",
    ).images
    assert torch.equal(done[0].images, plain.float())
    # the recorded image of a stopped candidate is its estimate of the finished image: a
    # picture, not the noisy latents the interrupted call decoded
    est = stopped[0].images
    assert est.shape == done[0].images.shape and 0 <= float(est.min()) <= float(est.max()) <= 1
    assert h.num_denoiser_evals == 2 * h.num_steps  # CFG's doubled batch at guidance 4


@pytest.mark.parametrize("sched", ["DDIMScheduler", "DPMSolverMultistepScheduler", "flow"])
def test_the_clean_estimate_is_the_final_sample_at_the_last_step(sched):
    import diffusers

    from generation.clean_estimate import capture_clean

    if sched == "flow":
        s = diffusers.FlowMatchEulerDiscreteScheduler()
    else:
        s = getattr(diffusers, sched)()
    s.set_timesteps(6)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 8, 8, generator=g)
    got: dict = {}
    with capture_clean(s, got):
        for t in s.timesteps:
            eps = torch.randn(x.shape, generator=g)
            x = s.step(eps, t, x, return_dict=False)[0]
            assert got["x0"].shape == x.shape
    # the schedule ends at sigma 0, where the sample is the clean estimate itself
    torch.testing.assert_close(got["x0"], x, rtol=1e-4, atol=1e-4)
    assert "step" not in vars(s)  # the scheduler is left as it was


def test_early_reject_falls_back_where_the_scheduler_gives_no_estimate(pipe, det):
    import diffusers

    other = diffusers.PNDMScheduler.from_config(pipe.scheduler.config)
    p2 = type(pipe)(**{**pipe.components, "scheduler": other})
    cfg = LoopConfig(strategy="early_reject", max_images=2, stop_when_aligned=False)
    h = FeedbackPipeline(p2, det, cfg, verifier=None)(PROMPT, num_inference_steps=10).history[0]
    assert [r.fix for r in h.rounds] == ["plain"] and len(h.rounds[0].seeds) == 2
    assert "PNDMScheduler" in h.rounds[0].extra["early_reject"]


def test_strategy_settings_are_objects_and_names_still_work():
    cfg = LoopConfig(strategy=Preview(steps=3, keep=1), max_images=2)
    assert cfg.strategy.name == cfg.strategy_name == "preview" and cfg.strategy.steps == 3
    assert cfg.to_dict()["strategy"] == {"name": "preview", "steps": 3, "keep": 1}
    assert LoopConfig(strategy="early_reject").strategy == EarlyReject()
    with pytest.raises(ValueError, match="LoopConfig.strategy must be one of"):
        LoopConfig(strategy="nope")


def test_the_report_marks_previews_and_counts_steps(pipe, det, tmp_path):
    from generation.figures import write_html

    cfg = LoopConfig(strategy="preview", max_steps=40, seed=1, stop_when_aligned=False)
    h = FeedbackPipeline(pipe, det, cfg, verifier=None)(
        PROMPT, num_inference_steps=10, guidance_scale=4.0, output_type="pt"
    ).history[0]
    page = write_html([h], tmp_path / "r.html").read_text(encoding="utf-8")
    assert page.count("(a 2-step look, never kept)") == len(h.rounds[0].seeds)
    assert f"<td>{h.num_steps} ({h.num_denoiser_evals})</td>" in page
