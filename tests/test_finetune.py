"""LoRA fine-tuning recipes: run through `accelerate launch` / torchrun on the shipped tiny
pipeline, write a LoRA stock diffusers loads, stay identical across ranks, resume after a
kill to the same LoRA."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
FILTERED = ROOT / "recipes" / "finetune_reward_filtered.py"
DISTILL = ROOT / "recipes" / "finetune_loop_distill.py"
DDPO = ROOT / "recipes" / "finetune_ddpo.py"
RELABEL = ROOT / "recipes" / "finetune_relabel.py"
GRPO = ROOT / "recipes" / "finetune_grpo.py"
ANCHORS_ONLY = ROOT / "recipes" / "finetune_anchors_only.py"
RECIPES = {
    "reward-filtered": FILTERED,
    "loop-distill": DISTILL,
    "ddpo": DDPO,
    "relabel": RELABEL,
    "grpo": GRPO,
}
TINY = ["--prompts-per-round", "2", "--images-per-prompt", "2", "--steps-per-round", "2"]
TINY += ["--batch-size", "2", "--sample-steps", "2", "--threads", "1"]


def _accelerate(script, *args):
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "1"]
    cmd += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    return cmd + [str(script), *args]


def _run(cmd, timeout=300):
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]


def _lora(path):
    from safetensors.torch import load_file

    return load_file(Path(path) / "pytorch_lora_weights.safetensors")


def _weights(out, train):
    """A recipe's trained weights: its LoRA, or its whole UNet's."""
    from safetensors.torch import load_file

    if train == "lora":
        return _lora(out / "lora")
    return load_file(Path(out) / "unet" / "diffusion_pytorch_model.safetensors")


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_smoke_lora_loads_into_stock_pipeline(recipe, tmp_path):
    out = tmp_path / "run"
    extra = ["--keep", "best"] if recipe == "loop-distill" else []  # something to learn from
    (summary,) = _run(
        _accelerate(RECIPES[recipe], "--output-dir", str(out), "--rounds", "2", *TINY, *extra)
    )
    assert summary["rounds_done"] == 2 and summary["num_processes"] == 1
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [r["round"] for r in log] == [0, 1]
    assert all(1 <= r["kept"] <= r["generated"] <= 4 for r in log)
    if recipe == "reward-filtered":
        # the better of the 2 prompts' best images is kept (--keep-fraction 0.5 by default):
        # its reward is at least the round's mean
        assert all(r["kept"] == 1 and r["reward_kept"] >= r["reward_all"] - 1e-6 for r in log)

    from shapesworld.pipelines import load_pipeline

    def image(pipe):
        g = torch.Generator().manual_seed(0)
        return pipe(
            "a red circle to the left of a blue square",
            num_inference_steps=4,
            generator=g,
            output_type="pt",
        ).images

    pipe = load_pipeline()
    plain = image(pipe)
    pipe.load_lora_weights(str(out / "lora"))  # stock diffusers, nothing of ours
    assert not torch.allclose(image(pipe), plain, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_two_ranks_stay_identical(recipe, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += [str(RECIPES[recipe]), "--output-dir", str(tmp_path / "ddp"), "--rounds", "2", *TINY]
    validated = recipe == "grpo"  # validation runs on rank 0 while rank 1 waits
    if validated:
        cmd += ["--val-every", "1", "--val-prompts", "2"]
    runs = _run(cmd)
    assert sorted(r["process_index"] for r in runs) == [0, 1]
    assert all(r["num_processes"] == 2 for r in runs)
    # different prompts per rank, averaged gradients: the same LoRA on both
    assert runs[0]["lora_digest"] == runs[1]["lora_digest"]
    if validated:
        vals = (tmp_path / "ddp" / "validation.jsonl").read_text().splitlines()
        assert [json.loads(x)["round"] for x in vals] == [-1, 0, 1]
        assert (tmp_path / "ddp" / "best" / "pytorch_lora_weights.safetensors").is_file()


@pytest.mark.slow
@pytest.mark.parametrize(
    "script,train",
    [(FILTERED, "lora"), (RELABEL, "lora"), (GRPO, "lora"), (GRPO, "full")],
    ids=["reward-filtered", "relabel", "grpo", "grpo-whole-unet"],
)
def test_a_recipe_resumes_after_sigkill_to_the_same_lora(tmp_path, script, train):
    FILTERED = script  # noqa: N806 - the same test body for each recipe
    rounds = ["--rounds", "6", "--train", train]
    straight = tmp_path / "straight"
    _run(_accelerate(FILTERED, "--output-dir", str(straight), *rounds, *TINY))

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        _accelerate(FILTERED, "--output-dir", str(killed), *rounds, *TINY),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    marker = killed / "checkpoint" / "round.json"
    deadline = time.time() + 240
    while not marker.is_file() and time.time() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = json.loads(marker.read_text())["next_round"]
    assert 1 <= done < 6, "the kill came after the run had finished"
    _run(_accelerate(FILTERED, "--output-dir", str(killed), *rounds, *TINY, "--resume"))
    a, b = _weights(straight, train), _weights(killed, train)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the log holds every round once, as the uninterrupted run's does
    logs = [
        [json.loads(x) for x in (d / "log.jsonl").read_text().splitlines()]
        for d in (straight, killed)
    ]
    assert [x["round"] for x in logs[1]] == list(range(6))
    assert [x["reward_all"] for x in logs[1]] == [x["reward_all"] for x in logs[0]]


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_step_matches_diffusers_and_its_log_prob_is_exact(eta):
    from diffusers import DDIMScheduler

    from generation.finetune.sampler import ddim_step_logprob
    from shapesworld.pipelines import pipeline_path

    sched = DDIMScheduler.from_pretrained(pipeline_path(), subfolder="scheduler")
    sched.set_timesteps(10)
    torch.manual_seed(0)
    x, eps, noise = torch.randn(3, 2, 4, 8, 8).unbind(0)
    t = sched.timesteps[3]
    want = sched.step(eps, t, x, eta=eta, variance_noise=noise).prev_sample
    g = torch.Generator().manual_seed(1)
    got, lp = ddim_step_logprob(sched, eps, t, x, max(eta, 1e-12), generator=g)
    if eta == 0:
        torch.testing.assert_close(got, want)
    else:
        # same noise -> same draw as diffusers' own stochastic step
        got2, _ = ddim_step_logprob(sched, eps, t, x, eta, prev_sample=want)
        torch.testing.assert_close(got2, want)
        # the density of a recorded draw is what was recorded
        _, lp2 = ddim_step_logprob(sched, eps, t, x, eta, prev_sample=got)
        torch.testing.assert_close(lp2, lp)
        # a draw far from the mean is less likely
        _, lp3 = ddim_step_logprob(sched, eps, t, x, eta, prev_sample=got + 3)
        assert (lp3 < lp).all()


def test_sampler_records_a_reproducible_trajectory():
    from generation.finetune.sampler import (
        ddim_scheduler,
        ddim_step_logprob,
        guided_eps,
        sample_with_logprob,
    )
    from shapesworld.pipelines import load_pipeline

    pipe = load_pipeline()
    prompts = ["a red circle", "a blue square to the left of a green cross"]
    a = sample_with_logprob(pipe, prompts, [3, 4], num_inference_steps=3)
    b = sample_with_logprob(pipe, prompts, [3, 4], num_inference_steps=3)
    assert a.latents.shape[:2] == (4, 2) and a.log_probs.shape == (3, 2)
    assert torch.equal(a.images, b.images) and torch.isfinite(a.log_probs).all()
    sched = ddim_scheduler(pipe, 3)
    with torch.no_grad():
        for j, t in enumerate(a.timesteps):
            eps = guided_eps(pipe.unet, a.latents[j], t, a.embeds, 4.0)
            _, lp = ddim_step_logprob(
                sched, eps, t, a.latents[j], 1.0, prev_sample=a.latents[j + 1]
            )
            torch.testing.assert_close(lp, a.log_probs[j])


def test_denoising_loss_noises_each_example_at_its_own_timestep():
    """Regression: the shipped pipeline's DPM-Solver `add_noise` ignores timesteps outside its
    inference schedule (every example got the same noise level, and fine-tuning collapsed)."""
    from diffusers import DPMSolverMultistepScheduler

    from generation.finetune import denoising_loss
    from shapesworld.pipelines import pipeline_path

    sched = DPMSolverMultistepScheduler.from_pretrained(pipeline_path(), subfolder="scheduler")
    sched.set_timesteps(20)  # as after sampling a round
    seen = {}

    class Probe(torch.nn.Module):
        def forward(self, noisy, t, encoder_hidden_states):
            seen["noisy"], seen["t"] = noisy, t
            return type("Out", (), {"sample": torch.zeros_like(noisy)})()

    latents = torch.ones(64, 1, 2, 2)
    g = torch.Generator().manual_seed(0)
    denoising_loss(Probe(), sched, latents, torch.zeros(64, 1, 4), g)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(latents.shape, generator=g)
    acp = sched.alphas_cumprod[seen["t"]].view(-1, 1, 1, 1)
    want = acp.sqrt() * latents + (1 - acp).sqrt() * noise
    assert len(set(seen["t"].tolist())) > 10
    torch.testing.assert_close(seen["noisy"], want)


def test_oracle_reward_ranks_right_images_above_wrong_ones():
    """The ceiling row's reward: 1 (+ a CLIPScore tie-break) when the oracle finds the image
    right, below 1 when it does not."""
    import numpy as np
    from torchvision.transforms.functional import to_tensor

    from recipes.finetune_reward_filtered import FilteredConfig
    from recipes.wiring import recipe_reward
    from shapesworld.captions import describe
    from shapesworld.render import render_scene
    from shapesworld.scenes import sample_scene

    rng = np.random.default_rng(3)
    scene = sample_scene(rng, 1)
    text = describe(scene, rng).text
    color = scene.objects[0].color
    wrong = text.replace(color, "green" if color != "green" else "red")
    image = to_tensor(render_scene(scene, 64))
    reward = recipe_reward(FilteredConfig(detector="shapes-tiny", reward="oracle"), "oracle", "cpu")
    r = reward(torch.stack([image, image]), [text, wrong])
    assert r[0] >= 1 > r[1]


def test_round_filter_keeps_each_prompts_best_then_the_top_share_above_a_floor():
    from generation.finetune import RoundSamples

    # 4 prompts x 3 images; bests: prompt 0 -> idx 1 (0.9), 1 -> 3 (0.2, tied), 2 -> 6 (0.7),
    # 3 -> 10 (-0.5)
    r = torch.tensor([0.1, 0.9, 0.0, 0.2, 0.1, 0.2, 0.7, 0.3, 0.6, -1.0, -0.5, -0.9])
    s = RoundSamples(torch.zeros(12, 3, 2, 2), ["p"] * 12, r, list(range(12)))
    assert s.best_per_prompt(3) == [1, 3, 6, 10]  # first of tied bests
    assert s.filtered(3) == [1, 3, 6, 10]
    assert s.filtered(3, keep_fraction=0.5) == [1, 6]
    assert s.filtered(3, min_reward=0.0) == [1, 3, 6]
    assert s.filtered(3, keep_fraction=0.25, min_reward=0.0) == [1]
    assert s.filtered(3, min_reward=2.0) == []


def test_anchor_counts_and_mixing():
    import numpy as np
    import torch

    from generation.finetune import Collected
    from generation.finetune.anchors import anchors_needed, with_anchors
    from shapesworld.data import anchor_source

    assert anchors_needed(6, 0.0) == 0
    assert anchors_needed(6, 0.5) == 6 and anchors_needed(3, 0.25) == 1
    assert anchors_needed(0, 0.5) == 1  # nothing kept: still learn from anchors
    got = Collected(torch.rand(4, 3, 32, 32), ["a"] * 4, 0.0, 0.0, 8)
    mixed, k = with_anchors(got, anchor_source(), 0.5, np.random.default_rng(0))
    assert k == 4 and mixed.images.shape == (8, 3, 32, 32) and mixed.prompts[:4] == ["a"] * 4
    assert all(p != "a" for p in mixed.prompts[4:])  # true captions of rendered scenes
    assert 0 <= float(mixed.images.min()) and float(mixed.images.max()) <= 1


def test_anchor_folders_are_checked_in_one_line(tmp_path):
    from PIL import Image

    from generation.finetune.anchors import folder_anchors

    with pytest.raises(ValueError, match="no such folder"):
        folder_anchors(tmp_path / "nope", (32, 32))
    with pytest.raises(ValueError, match="no images"):
        folder_anchors(tmp_path, (32, 32))
    Image.new("RGB", (40, 20), "red").save(tmp_path / "a.png")
    with pytest.raises(ValueError, match="a.png has no caption file a.txt"):
        folder_anchors(tmp_path, (32, 32))
    (tmp_path / "a.txt").write_text("  ")
    with pytest.raises(ValueError, match="a.txt is empty"):
        folder_anchors(tmp_path, (32, 32))
    (tmp_path / "a.txt").write_text("a red square\n")
    (tmp_path / "b.png").write_text("not an image")
    (tmp_path / "b.txt").write_text("x")
    with pytest.raises(ValueError, match="b.png is not an image"):
        folder_anchors(tmp_path, (32, 32))
    (tmp_path / "b.png").unlink()
    import numpy as np

    imgs, caps = folder_anchors(tmp_path, (32, 32))(3, np.random.default_rng(0))
    assert imgs.shape == (3, 3, 32, 32) and caps == ["a red square"] * 3


@pytest.mark.slow
def test_a_recipe_mixes_anchors_at_the_stated_share(tmp_path):
    out = tmp_path / "run"
    (summary,) = _run(
        [sys.executable, str(FILTERED), "--output-dir", str(out), "--rounds", "1"]
        + TINY
        + ["--anchor-fraction", "0.5", "--keep-fraction", "1"]
    )
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert log[0]["anchors"] == max(log[0]["kept"], 1) and log[0]["anchor_share"] >= 0.5
    bad = subprocess.run(
        [sys.executable, str(FILTERED), "--output-dir", str(out), "--anchor-dir", "/nope"]
        + ["--anchor-fraction", "0.5", "--rounds", "1"]
        + TINY,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert bad.returncode == 2 and "--anchor-dir: no such folder: /nope" in bad.stderr


def test_relabel_candidates_replace_only_the_given_words_and_swap_pairs():
    from feedback import split_words
    from generation.finetune.relabel import candidates
    from recipes.finetune_relabel import CLASSES

    prompt = "a small red circle to the left of a blue square"
    words = {w.text: w for w in split_words(prompt)}
    one = candidates(prompt, [words["red"]], CLASSES)
    assert "a small green circle to the left of a blue square" in one
    assert all(c.split()[3:] == prompt.split()[3:] for c in one)  # only "red" changes
    two = candidates(prompt, [words["red"], words["blue"], words["left"]], CLASSES)
    assert "a small blue circle to the left of a red square" in two  # the attribute swap
    assert "a small red circle to the right of a blue square" in two
    assert prompt not in two and len(two) == len(set(two))
    assert candidates(prompt, [words["of"]], CLASSES) == []  # no kind: nothing to try


def test_relabel_keeps_aligned_prompts_and_its_twin_takes_the_best_clipscore(tiny_open_clip_dir):
    import torch

    from feedback import MisalignmentDetector
    from generation.finetune.relabel import candidates, relabel
    from recipes.finetune_relabel import CLASSES

    x = torch.rand(2, 3, 32, 32)
    prompts = ["a red circle", "a blue square left of a red cross"]
    lax = MisalignmentDetector.from_pretrained(str(tiny_open_clip_dir), threshold=-1e9)
    assert relabel(lax, x, prompts, CLASSES) == prompts  # nothing flagged: kept as is
    strict = MisalignmentDetector.from_pretrained(str(tiny_open_clip_dir), mode="most-negative")
    out = relabel(strict, x, prompts, CLASSES)  # always a word flagged: a replacement or None
    assert all(c is None or c != p for c, p in zip(out, prompts))
    twin = relabel(lax, x, prompts, CLASSES, by="clip_score")
    from feedback import split_words

    for k, p in enumerate(prompts):
        cands = [p, *candidates(p, split_words(p), CLASSES)]
        cos = lax.cosine(x[k : k + 1], cands)[0]
        assert twin[k] == cands[int(cos.argmax())]
    with pytest.raises(ValueError, match="relabel by"):
        relabel(lax, x, prompts, CLASSES, by="oracle")


@pytest.mark.parametrize("mode,step", [("lora", 0.05), ("full", 0.01)])
def test_grpo_kl_is_zero_at_the_base_and_grows_with_the_trained_weights(mode, step):
    """The KL anchor compares the current policy's step with the base's on the same latent:
    the UNet with its LoRA off, or (whole UNet trained) a frozen copy kept outside the module.
    Exactly 0 while nothing has moved, > 0 once the weights move, and the copy never moves."""
    import torch

    from generation.finetune import Collected, make_trainable
    from generation.finetune.policy import PolicyConfig, group_advantages, policy_objective
    from generation.finetune.sampler import sample_with_logprob
    from generation.finetune.trainable import _REFERENCES
    from recipes.finetune_grpo import GRPOConfig
    from shapesworld.pipelines import load_pipeline

    pipe = load_pipeline()
    params = make_trainable(pipe.unet, mode, rank=4, seed=0)
    if mode == "full":
        assert len(params) == len(list(pipe.unet.parameters()))
        assert all(p.requires_grad for p in params)
        ref = _REFERENCES[pipe.unet]
        assert not any(p.requires_grad for p in ref.parameters())
        assert "_REFERENCES" not in str(list(pipe.unet.state_dict()))  # not a submodule
        frozen = {k: v.clone() for k, v in ref.state_dict().items()}
    cfg = PolicyConfig(sample_steps=3, kl=0.1)
    # the recipe's config builds the objective's own (its KL weight included)
    assert GRPOConfig(sample_steps=3, kl=0.1).policy() == cfg
    tr = sample_with_logprob(pipe, ["a red circle"] * 2, [0, 1], num_inference_steps=3)
    adv = group_advantages(torch.tensor([1.0, 0.0]), 2)
    assert adv.tolist() == pytest.approx([0.7071, -0.7071], abs=1e-3)
    got = Collected(tr.images, ["a red circle"] * 2, 0.5, 0.5, 2, (tr, adv))
    _, loss_fn = policy_objective(pipe, got, torch.Generator().manual_seed(0), cfg)
    loss_fn(pipe.unet, torch.arange(2))
    assert loss_fn.kl == [0.0]
    with torch.no_grad():
        for p in params:
            p.add_(step * torch.randn_like(p))
    loss_fn(pipe.unet, torch.arange(2))
    assert loss_fn.kl[-1] > 0
    if mode == "full":
        assert all(torch.equal(frozen[k], v) for k, v in ref.state_dict().items())


def test_the_trainer_imports_nothing_from_shapesworld():
    """`generation.finetune` is a library: ShapesWorld is wired in by the recipes only."""
    import ast

    for path in (ROOT / "generation" / "finetune").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            assert not any(n.split(".")[0] == "shapesworld" for n in names), path.name


def _tiny_round_kit(tmp_path, **cfg_kw):
    """A config, a collect step (every sampled image kept, zero reward) and a prompt source for
    in-process `run_rounds` calls on the shipped pipeline."""
    from generation.finetune import Collected, RoundsConfig, sample_round

    cfg = RoundsConfig(
        output_dir=str(tmp_path),
        prompts_per_round=2,
        images_per_prompt=1,
        steps_per_round=2,
        batch_size=2,
        sample_steps=2,
        threads=1,
        **cfg_kw,
    )

    def collect(pipe, prompts, seeds):
        s = sample_round(
            pipe, prompts, 1, seeds, lambda im, p: im.new_zeros(len(p)), num_inference_steps=2
        )
        return Collected(s.images, s.prompts, 0.0, 0.0, len(s.prompts))

    def prompts_for(r, rank):
        return [f"a red circle above a blue square {r}", "a small green triangle"]

    return cfg, collect, prompts_for


@pytest.mark.slow
def test_run_rounds_takes_a_pipeline_object_and_refuses_other_families(tmp_path):
    """The trainer takes the user's pipeline object (no ShapesWorld name), trains it, writes a
    LoRA stock diffusers loads; a pipeline family it cannot train is one clear error before
    any image is made."""
    from generation.finetune import run_rounds
    from shapesworld.pipelines import load_pipeline
    from tests import tiny_pipelines

    cfg, collect, prompts_for = _tiny_round_kit(tmp_path / "sd", rounds=1, pipeline="not-a-name")
    rec = run_rounds(cfg, collect, prompts_for, pipeline=load_pipeline())
    assert rec.rounds_done == 1 and rec.to_dict()["rounds_done"] == 1
    assert (tmp_path / "sd" / "lora" / "pytorch_lora_weights.safetensors").is_file()

    tok = load_pipeline().tokenizer
    flux = tiny_pipelines.build("flux", tok)
    calls = []
    cfg, _, prompts_for = _tiny_round_kit(tmp_path / "flux", rounds=1)
    with pytest.raises(ValueError, match="SD 1.x/2.x.*FLUX"):
        run_rounds(cfg, lambda *a: calls.append(a), prompts_for, pipeline=flux)
    assert not calls


@pytest.mark.slow
@pytest.mark.parametrize("train", ["lora", "full"])
def test_run_rounds_gives_a_lent_pipeline_back_as_it_found_it(tmp_path, train):
    """A pipeline object passed in keeps its dtype, requires_grad flags, train/eval modes,
    progress-bar config and weights (no LoRA left on it); the thread count is put back."""
    from generation.finetune import RoundsResult, run_rounds
    from shapesworld.pipelines import load_pipeline

    pipe = load_pipeline().to(dtype=torch.bfloat16)
    pipe.set_progress_bar_config(leave=False, desc="mine")
    pipe.text_encoder.requires_grad_(False)
    pipe.unet.train()

    def snapshot():
        return {
            name: (
                {k: (p.dtype, p.requires_grad) for k, p in m.named_parameters()},
                [sub.training for sub in m.modules()],
            )
            for name, m in pipe.components.items()
            if isinstance(m, torch.nn.Module)
        }

    before, weights = snapshot(), {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    threads = torch.get_num_threads()
    cfg, collect, prompts_for = _tiny_round_kit(tmp_path, rounds=1, train=train)
    cfg.threads = threads + 1
    rec = run_rounds(cfg, collect, prompts_for, pipeline=pipe)
    assert isinstance(rec, RoundsResult) and rec.to_dict()["round"] == 0
    assert pipe.dtype == torch.bfloat16 and snapshot() == before
    assert pipe._progress_bar_config == {"leave": False, "desc": "mine"}
    assert torch.get_num_threads() == threads
    after = pipe.unet.state_dict()
    assert after.keys() == weights.keys() and all(torch.equal(after[k], weights[k]) for k in after)
    assert not getattr(pipe.unet, "peft_config", None)


@pytest.mark.slow
@pytest.mark.parametrize("train", ["lora", "full"])
def test_validation_keeps_the_best_round_and_resumes(tmp_path, train):
    """With `val_every`, the base and every k-th round are validated; OUTPUT/best holds the
    weights of the best-scoring round (ties: the earlier), here round 1 of 4, byte-equal to a
    2-round run's; a resumed run keeps the earlier scores instead of validating again."""
    from generation.finetune import load_trained, run_rounds
    from shapesworld.pipelines import load_pipeline

    scores = iter([0.2, 0.5, 0.3])  # base, after round 1, after round 3
    cfg, collect, prompts_for = _tiny_round_kit(
        tmp_path / "val", rounds=2, val_every=2, train=train
    )
    seen = []

    def validate(pipe):
        seen.append(pipe.unet.training)
        return next(scores)

    rec = run_rounds(cfg, collect, prompts_for, pipeline=load_pipeline(), validate=validate)
    assert rec.best_round == 1 and rec.best_val == 0.5
    cfg.rounds, cfg.resume = 4, True
    rec = run_rounds(cfg, collect, prompts_for, pipeline=load_pipeline(), validate=validate)
    assert seen == [False, False, False]  # validated in eval mode, base once only
    vals = [json.loads(x) for x in (tmp_path / "val" / "validation.jsonl").read_text().splitlines()]
    assert [(v["round"], v["val"], v["best"]) for v in vals] == [
        (-1, 0.2, True),
        (1, 0.5, True),
        (3, 0.3, False),
    ]
    assert (
        rec.best_round == 1
        and json.loads((tmp_path / "val" / "best.json").read_text())["round"] == 1
    )
    log = [json.loads(x) for x in (tmp_path / "val" / "log.jsonl").read_text().splitlines()]
    assert [x.get("val") for x in log] == [None, 0.5, None, 0.3]

    two, _, _ = _tiny_round_kit(tmp_path / "two", rounds=2, train=train)
    run_rounds(two, collect, prompts_for, pipeline=load_pipeline())
    last = "lora" if train == "lora" else "unet"

    def image(folder):
        pipe = load_trained(load_pipeline(), folder)
        g = torch.Generator().manual_seed(0)
        return pipe("a red circle", num_inference_steps=3, generator=g, output_type="pt").images

    best = image(tmp_path / "val" / "best")
    assert torch.equal(best, image(tmp_path / "two" / last))
    assert not torch.equal(best, image(tmp_path / "val" / last))  # not the last round


@pytest.mark.slow
def test_whole_unet_recipe_writes_a_unet_stock_diffusers_loads(tmp_path):
    """`--train full` trains every UNet weight and writes a diffusers UNet folder that stock
    `UNet2DConditionModel.from_pretrained` reads into the pipeline; it changes the output."""
    from diffusers import UNet2DConditionModel

    from shapesworld.pipelines import load_pipeline

    out = tmp_path / "full"
    (summary,) = _run(
        _accelerate(GRPO, "--output-dir", str(out), "--rounds", "1", "--train", "full", *TINY)
    )
    assert summary["rounds_done"] == 1
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert log[0]["kl"] >= 0
    pipe = load_pipeline()
    g = torch.Generator().manual_seed(0)
    plain = pipe("a red circle", num_inference_steps=3, generator=g, output_type="pt").images
    pipe.unet = UNet2DConditionModel.from_pretrained(out / "unet")  # stock diffusers only
    g = torch.Generator().manual_seed(0)
    tuned = pipe("a red circle", num_inference_steps=3, generator=g, output_type="pt").images
    assert not torch.allclose(tuned, plain, atol=1e-5)


def test_a_bad_train_mode_is_one_line():
    proc = subprocess.run(
        [sys.executable, str(FILTERED), "--train", "everything"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "finetune_reward_filtered.py: error: --train must be one of ('lora', 'full'), got "
        "'everything'"
    ]


@pytest.mark.slow
def test_the_readmes_trainer_snippet_runs_as_written(tmp_path, monkeypatch):
    """The docs' library example (`run_rounds` on a pipeline object with a validator)
    runs as written and leaves what its last comment promises."""
    page = (ROOT / "docs" / "how-to" / "fine-tuning.md").read_text()
    block = page.split("**The trainer is a library**")[1].split("```python")[1].split("```")[0]
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "docs/how-to/fine-tuning.md", "exec"), {})  # noqa: S102 - the docs' example
    best = json.loads((tmp_path / "runs" / "mine" / "best.json").read_text())
    assert best["round"] in (-1, 0, 1)
    from shapesworld.pipelines import load_pipeline

    load_pipeline().load_lora_weights(str(tmp_path / "runs" / "mine" / "best"))


@pytest.mark.slow
def test_the_anchors_only_control_trains_on_anchors_and_generates_nothing(tmp_path):
    """The control recipe: each round learns from `--anchors-per-round` rendered pairs, makes
    no image, and still writes a LoRA stock diffusers loads that changes the output."""
    out = tmp_path / "anchors"
    args = ["--output-dir", str(out), "--rounds", "2", *TINY, "--anchors-per-round", "3"]
    (summary,) = _run(_accelerate(ANCHORS_ONLY, *args))
    assert summary["rounds_done"] == 2
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [(r["kept"], r["generated"], r["anchors"]) for r in log] == [(3, 0, 0)] * 2
    from shapesworld.pipelines import load_pipeline

    pipe = load_pipeline()
    g = torch.Generator().manual_seed(0)
    plain = pipe("a red circle", num_inference_steps=3, generator=g, output_type="pt").images
    pipe.load_lora_weights(str(out / "lora"))
    g = torch.Generator().manual_seed(0)
    tuned = pipe("a red circle", num_inference_steps=3, generator=g, output_type="pt").images
    assert not torch.allclose(tuned, plain, atol=1e-4)
