"""The round loop every LoRA recipe shares: collect images to learn from, take denoising steps
on them, checkpoint; data parallel through accelerate, resumable to the same result.

A recipe supplies only `collect(pipe, prompts, seeds) -> Collected`: which images of the
round's prompts to learn from (best-of-N by a reward, the feedback loop's fixed images, ...).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from tqdm.auto import tqdm

from .anchors import AnchorSource, folder_anchors, with_anchors
from .lora import add_unet_lora, lora_digest, save_lora
from .ranges import COUNT, NONNEG, NONNEG_INT, POSITIVE, Range, check_ranges
from .rounds import denoising_loss, encode_images, training_scheduler


@dataclass
class RoundsConfig:
    """What every recipe shares (each field is a command-line flag of the recipe)."""

    output_dir: str = "runs/finetune"
    pipeline: str = "shapes-sd-tiny"
    detector: str = "shapes-tiny-gen"
    """The CLIP4DM detector (and its loop eps from the pipeline card)."""
    rounds: int = 12
    prompts_per_round: int = 32
    """Per process."""
    images_per_prompt: int = 4
    """Images generated per prompt and round (the compute the recipes are compared at)."""
    steps_per_round: int = 25
    """Optimizer steps per round."""
    batch_size: int = 8
    gradient_accumulation_steps: int = 1
    lr: float = 3e-4
    rank: int = 8
    """LoRA rank."""
    sample_steps: int = 20
    guidance: float = 4.0
    seed: int = 0
    resume: bool = False
    threads: int = 2
    caption_dropout: float = 0.2
    """Share of denoising examples trained with the empty prompt instead of their own, so the
    unconditional prediction that classifier-free guidance subtracts is trained on the same
    images (as in the base model's training); 0 trains the conditional prediction only.
    Denoising objectives only (DDPO's policy objective ignores it)."""
    anchor_fraction: float = 0.0
    """Share of each round's denoising examples drawn from anchor data (real image-caption
    pairs: on ShapesWorld rendered scenes with their exact captions), so self-generated
    samples never make up the whole signal; 0 = none. Denoising objectives only."""
    anchor_dir: str = ""
    """A folder of anchor images, each with a same-stem .txt caption; empty = the recipe's
    own anchors (ShapesWorld renders)."""

    RANGES: ClassVar[dict] = {
        "rounds": COUNT,
        "prompts_per_round": COUNT,
        "images_per_prompt": COUNT,
        "steps_per_round": COUNT,
        "batch_size": COUNT,
        "gradient_accumulation_steps": COUNT,
        "lr": POSITIVE,
        "rank": COUNT,
        "sample_steps": COUNT,
        "guidance": NONNEG,
        "seed": NONNEG_INT,
        "threads": COUNT,
        "caption_dropout": Range(0, 1, hi_open=True),
        "anchor_fraction": Range(0, 1, hi_open=True),
    }

    def __post_init__(self):
        check_ranges(self)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Collected:
    """What a round learns from: `images` (K, 3, H, W) in [0, 1] with their `prompts`, and for
    the log the mean reward of everything generated and of what was kept (K may be 0)."""

    images: torch.Tensor
    prompts: list[str]
    reward_all: float
    reward_kept: float
    generated: int
    payload: object = None
    """Whatever else the recipe's objective needs (e.g. sampling trajectories)."""


def _save_checkpoint(accelerator, out: Path, next_round: int) -> None:
    """Write the state to a fresh folder, then swap it in: a kill leaves the old one whole."""
    tmp, ckpt, old = out / "checkpoint.tmp", out / "checkpoint", out / "checkpoint.old"
    accelerator.save_state(str(tmp))
    if accelerator.is_main_process:
        (tmp / "round.json").write_text(json.dumps({"next_round": next_round}))
        if ckpt.exists():
            ckpt.rename(old)
        tmp.rename(ckpt)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def _logged_round(line: str) -> float:
    """The round a log line records (infinity for a line that does not parse)."""
    try:
        return json.loads(line)["round"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return float("inf")


def _image_size(pipe) -> tuple[int, int]:
    px = pipe.unet.config.sample_size * pipe.vae_scale_factor
    return (px, px)


def denoising_objective(pipe, got: Collected, gen: torch.Generator, cfg: RoundsConfig):
    """The default objective: the diffusion loss on the collected images with their prompts
    (the empty prompt for a `cfg.caption_dropout` share of examples).

    Returns (number of items, loss_fn(unet, idx) -> scalar loss on items `idx`)."""
    kept = len(got.prompts)
    # Nothing kept on this rank: one blank example at weight 0 keeps its forward/backward
    # (and DDP's gradient averaging) in step with the other ranks, and changes nothing.
    images = got.images if kept else torch.zeros(1, 3, *_image_size(pipe))
    latents = encode_images(pipe.vae, images, gen)
    with torch.no_grad():
        embeds = pipe.encode_prompt(got.prompts or [""], pipe.device, 1, False)[0]
        empty = pipe.encode_prompt([""], pipe.device, 1, False)[0]
    weight = torch.ones(len(latents)) if kept else torch.zeros(1)
    noise_sched = training_scheduler(pipe.scheduler)  # once, not per optimizer step

    def loss_fn(unet, idx):
        cond = embeds[idx]
        if cfg.caption_dropout > 0:
            drop = (torch.rand(len(idx), generator=gen) < cfg.caption_dropout).to(cond.device)
            cond = torch.where(drop[:, None, None], empty.expand_as(cond), cond)
        return denoising_loss(unet, noise_sched, latents[idx], cond, gen, weight[idx])

    return len(latents), loss_fn


def run_rounds(
    cfg: RoundsConfig,
    collect: Callable[..., Collected],
    prompts_for: Callable[[int, int], list[str]],
    name: str = "finetune",
    objective: Callable = denoising_objective,
    anchors: AnchorSource | None = None,
) -> dict:
    """Run `cfg.rounds` rounds (from the checkpoint with `cfg.resume`).

    collect(pipe, prompts, seeds): the round's images to learn from (seeds: one per image the
        round may generate, `images_per_prompt` per prompt, prompt-major).
    prompts_for(round, process_index): that process's training prompts for the round.
    objective(pipe, collected, generator, cfg) -> (n_items, loss_fn(unet, idx)): what the
        optimizer steps minimize on random minibatches of the round's items (default:
        denoising).
    anchors(n, rng) -> (images, captions): the recipe's anchor data (`generation.finetune.
        anchors`), mixed in at `cfg.anchor_fraction` (`cfg.anchor_dir` overrides it).
    Returns the last round's log record with the run's `lora_digest`.
    """
    from accelerate import Accelerator

    from shapesworld.pipelines import load_pipeline

    torch.set_num_threads(cfg.threads)
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(),
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
    )
    out = Path(cfg.output_dir)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    pipe = load_pipeline(cfg.pipeline, device=str(accelerator.device))
    if cfg.anchor_dir:
        anchors = folder_anchors(cfg.anchor_dir, _image_size(pipe))
    if cfg.anchor_fraction > 0 and anchors is None:
        raise ValueError(
            "--anchor-fraction > 0 needs anchor data: pass --anchor-dir (images with .txt "
            "captions) or use a recipe that provides its own"
        )
    params = add_unet_lora(pipe.unet, rank=cfg.rank, seed=cfg.seed)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    # Training forwards go through the prepared module (DDP averages gradients there); the
    # pipeline samples with the same parameters through `pipe.unet`.
    unet, opt = accelerator.prepare(pipe.unet, opt)
    start = 0
    ckpt = out / "checkpoint"
    if cfg.resume and (ckpt / "round.json").is_file():
        accelerator.load_state(str(ckpt))
        start = json.loads((ckpt / "round.json").read_text())["next_round"]
    rank, world = accelerator.process_index, accelerator.num_processes
    log_path = out / "log.jsonl"
    if accelerator.is_main_process and log_path.is_file():
        # Rounds logged after the checkpoint (a kill between a round's log line and its
        # checkpoint) are run again: keep only the log of the rounds the checkpoint holds.
        # (A line cut short by the kill is dropped too.)
        kept = [x for x in log_path.read_text().splitlines() if _logged_round(x) < start]
        log_path.write_text("".join(x + "\n" for x in kept))
    log = open(log_path, "a") if accelerator.is_main_process else None
    n_img = cfg.prompts_per_round * cfg.images_per_prompt
    rec: dict = {}
    main = accelerator.is_main_process
    for r in tqdm(range(start, cfg.rounds), desc=name, disable=not main):
        t0 = time.perf_counter()
        # Every random draw is seeded by (seed, round, process): a resumed run repeats exactly.
        base = 10_000_000 * (cfg.seed + 1) + 100_000 * r + 1000 * rank
        pipe.unet.eval()
        got = collect(pipe, prompts_for(r, rank), list(range(base, base + n_img)))
        gen = torch.Generator().manual_seed(base)
        rng = np.random.default_rng([cfg.seed, r, rank])
        losses = []
        kept = len(got.prompts)
        n_anchor = 0
        if cfg.anchor_fraction > 0 and objective is denoising_objective:
            got, n_anchor = with_anchors(got, anchors, cfg.anchor_fraction, rng)
        n_items, loss_fn = objective(pipe, got, gen, cfg)
        pipe.unet.train()
        for _ in range(cfg.steps_per_round * cfg.gradient_accumulation_steps):
            idx = torch.from_numpy(rng.choice(n_items, size=min(cfg.batch_size, n_items)))
            with accelerator.accumulate(unet):
                loss = loss_fn(unet, idx)
                accelerator.backward(loss)
                opt.step()
                opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
        rec = {
            "round": r,
            "reward_all": got.reward_all,
            "reward_kept": got.reward_kept,
            "kept": kept,
            "anchors": n_anchor,
            "anchor_share": round(n_anchor / max(kept + n_anchor, 1), 4),
            "generated": got.generated,
            "loss": float(np.mean(losses)) if losses else None,
            **({"kl": float(np.mean(loss_fn.kl))} if getattr(loss_fn, "kl", None) else {}),
            "seconds": round(time.perf_counter() - t0, 2),
        }
        if main:  # the log line first: a kill before the checkpoint only repeats the round
            log.write(json.dumps(rec) + "\n")
            log.flush()
        _save_checkpoint(accelerator, out, r + 1)
        if main:
            save_lora(accelerator.unwrap_model(unet), out / "lora")
    rec.update(
        process_index=rank,
        num_processes=world,
        rounds_done=cfg.rounds,
        lora_digest=lora_digest(accelerator.unwrap_model(unet)),
    )
    return rec
