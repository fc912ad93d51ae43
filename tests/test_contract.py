"""The diffusers call contract and a pipeline's own defaults: `generator` as diffusers takes
it, `num_images_per_prompt` returning the k best, and the settings each result records."""

from __future__ import annotations

import pytest
import tiny_pipelines as tp
import torch

from feedback import MisalignmentDetector
from generation import FeedbackPipeline, LoopConfig

PROMPT = "a red circle to the left of a blue square"


@pytest.fixture(scope="module")
def detector(tiny_open_clip_dir):
    return MisalignmentDetector.from_pretrained(str(tiny_open_clip_dir))


@pytest.fixture(scope="module")
def saved(sd_tokenizers, tmp_path_factory):
    """Pipelines of two families saved with save_pretrained and loaded back, as a user's."""
    from diffusers import DiffusionPipeline

    out = {}
    for fam in ("sd", "flux"):
        pipe = tp.build(fam, sd_tokenizers["sd"], sd_tokenizers["sdxl_2"])
        folder = tmp_path_factory.mktemp(fam)
        pipe.save_pretrained(folder)
        loaded = DiffusionPipeline.from_pretrained(folder)
        loaded.set_progress_bar_config(disable=True)
        out[fam] = loaded
    return out


def _kw(fam):
    kw = tp.call_kwargs(fam)
    kw.pop("num_inference_steps", None)
    return {**kw, "num_inference_steps": 3}


@pytest.mark.parametrize("fam", ["sd", "flux"])
@pytest.mark.parametrize("kind", ["one", "list"])
def test_round_zero_is_the_pipelines_own_call(fam, kind, saved, detector):
    pipe = saved[fam]
    kw = _kw(fam)

    def gen():
        if kind == "one":
            return torch.Generator().manual_seed(7)
        return [torch.Generator().manual_seed(7 + i) for i in range(2)]

    cfg = LoopConfig(strategy="resample", max_images=4, stop_when_aligned=False)
    out = FeedbackPipeline(pipe, detector, cfg, verifier=None)(
        PROMPT, generator=gen(), num_images_per_prompt=2, output_type="pt", **kw
    )
    h = out.history[0]
    ref = pipe(PROMPT, generator=gen(), num_images_per_prompt=2, output_type="pt", **kw).images
    assert torch.equal(h.rounds[0].images, torch.as_tensor(ref).float())
    assert h.rounds[0].seeds == [None, None] and h.num_images == 4
    # the k best come back, best first: the kept image leads
    assert out.images.shape[0] == 2
    r, i = h.best
    assert torch.equal(out.images[0], h.rounds[r].images[i])
    assert not torch.equal(out.images[0], out.images[1])


def test_best_of_n_with_k_asked_runs_rounds_of_k(saved, detector):
    pipe = saved["sd"]
    cfg = LoopConfig(strategy="best_of_n", max_images=4)
    g = torch.Generator().manual_seed(3)
    out = FeedbackPipeline(pipe, detector, cfg, verifier=None)(
        [PROMPT, "a green triangle"], generator=g, num_images_per_prompt=2, **_kw("sd")
    )
    assert len(out.images) == 4  # two prompts x the 2 best
    assert [len(r.seeds) for r in out.history[0].rounds] == [2, 2]


def test_bad_generators_and_k_are_refused(saved, detector):
    fb = FeedbackPipeline(saved["sd"], detector, LoopConfig(max_images=2), verifier=None)
    with pytest.raises(ValueError, match="holds 3 generators"):
        fb(PROMPT, generator=[torch.Generator()] * 3, num_images_per_prompt=2, **_kw("sd"))
    with pytest.raises(ValueError, match="more images than the budget"):
        fb(PROMPT, num_images_per_prompt=3, **_kw("sd"))


def test_the_pipelines_own_defaults_and_the_settings_recorded(saved, detector, tmp_path):
    """No steps given: a user's pipeline runs at its call's own defaults, and the results say
    what ran; a card beside the weights sets the generator's tuned settings instead."""
    import inspect
    import json

    pipe = saved["sd"]
    own = inspect.signature(pipe.__call__).parameters
    fb = FeedbackPipeline(pipe, detector, LoopConfig(max_images=1), verifier=None)
    h = fb(PROMPT, output_type="pt").history[0]
    s = h.to_dict()["settings"]
    assert s["num_inference_steps"] == own["num_inference_steps"].default
    assert s["guidance_scale"] == own["guidance_scale"].default
    assert (s["height"], s["width"]) == tuple(h.rounds[0].images.shape[-2:])
    assert s["detector"] == detector.backend.name and s["eps"] == detector.config.threshold
    assert s["verifier"] is None
    assert h.num_steps == own["num_inference_steps"].default
    # the card in the pipeline's folder
    folder = tmp_path / "p"
    pipe.save_pretrained(folder)
    (folder / "model_card.json").write_text(
        json.dumps({"call_defaults": {"num_inference_steps": 4, "guidance_scale": 2.5}})
    )
    from diffusers import DiffusionPipeline

    p2 = DiffusionPipeline.from_pretrained(folder)
    p2.set_progress_bar_config(disable=True)
    h2 = FeedbackPipeline(p2, detector, LoopConfig(max_images=1), verifier=None)(
        PROMPT, output_type="pt"
    ).history[0]
    assert h2.settings["num_inference_steps"] == 4 and h2.settings["guidance_scale"] == 2.5
    assert h2.num_steps == 4


@pytest.mark.parametrize("fam", ["flux", "sdxl"])
def test_generate_on_a_users_pipeline(fam, sd_tokenizers, tiny_hf_dir, tmp_path, capsys):
    """A pipeline saved by diffusers, a CLIP saved by transformers: offline, `generate`
    without a detector stops in one line before any image; with `--model DIR` it runs at the
    pipeline's own call defaults and records them."""
    import inspect
    import json

    from generation.cli import main

    pipe = tp.build(fam, sd_tokenizers["sd"], sd_tokenizers["sdxl_2"])
    folder = tmp_path / fam
    pipe.save_pretrained(folder)
    prompts = tmp_path / "p.txt"
    prompts.write_text("a photo of a dog on a beach\n", encoding="utf-8")
    extra = []
    for k, v in tp.CALL[fam].items():
        if k == "guidance_scale":
            extra += ["--guidance", str(v)]
        else:
            extra += ["--pipeline-arg", f"{k}={json.dumps(v)}"]
    args = ["generate", "--pipeline", str(folder), "--prompts", str(prompts), "--budget", "1"]
    args += ["--height", "32", "--width", "32", *extra]
    capsys.readouterr()  # save_pretrained's bars
    assert main([*args, "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "openai/clip-vit-large-patch14" in err[0]
    assert "--model shapes-tiny" in err[0]
    assert not list((tmp_path / "a").rglob("*.png"))
    assert main([*args, "--out", str(tmp_path / "b"), "--model", str(tiny_hf_dir)]) == 0
    row = json.loads((tmp_path / "b" / "results.jsonl").read_text().splitlines()[0])
    own = inspect.signature(type(pipe).__call__).parameters
    s = row["settings"]
    assert s["num_inference_steps"] == own["num_inference_steps"].default
    if "guidance_scale" not in tp.CALL[fam]:
        assert s["guidance_scale"] == own["guidance_scale"].default
    assert s["detector"] == str(tiny_hf_dir) or s["detector"].endswith(tiny_hf_dir.name)
    assert s["verifier"] is None and (s["height"], s["width"]) == (32, 32)
    assert row["num_steps"] == own["num_inference_steps"].default


def test_the_loops_detector_comes_from_the_card_else_the_real_default(saved):
    """FeedbackPipeline(pipe): the shipped pipeline's card names its detector and eps (found
    by path); a user's pipeline without a card gets feedback.DEFAULT_MODEL, which offline is
    one error naming it."""
    from feedback import DEFAULT_MODEL
    from feedback.errors import OfflineError
    from shapesworld.pipelines import LOOP_DETECTOR, load_pipeline, loop_threshold

    fb = FeedbackPipeline(load_pipeline())
    assert fb.detector.backend.name == LOOP_DETECTOR and fb.verifier is not None
    assert fb.card is not None and fb.card.threshold_for(LOOP_DETECTOR) == loop_threshold()
    with pytest.raises(OfflineError, match=DEFAULT_MODEL.replace("/", ".")):
        FeedbackPipeline(saved["sd"])
