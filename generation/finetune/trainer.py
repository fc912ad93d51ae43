"""The round loop every fine-tuning recipe shares: collect images to learn from, take
optimizer steps on them, validate, checkpoint; data parallel through accelerate, resumable to
the same result.

It is a library: `run_rounds` takes a diffusers pipeline (or what loads one), a prompt source
and the recipe's `collect(pipe, prompts, seeds) -> Collected` (which images of the round's
prompts to learn from: best-of-N by a reward, the feedback loop's fixed images, ...), and
loads nothing of ShapesWorld's; the recipes under `recipes/` wire ShapesWorld in.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from tqdm.auto import tqdm

from .anchors import AnchorSource, folder_anchors, with_anchors
from .ranges import COUNT, NONNEG, NONNEG_INT, POSITIVE, Range, check_ranges
from .rounds import denoising_loss, encode_images, training_scheduler
from .trainable import MODES, make_trainable, save_trained, trained_digest
from .validation import Validator


@dataclass
class RoundsConfig:
    """What every recipe shares (each field is a command-line flag of the recipe)."""

    output_dir: str = "runs/finetune"
    pipeline: str = "shapes-sd-tiny"
    """The pipeline to fine-tune: a diffusers folder or model id (the ShapesWorld recipes also
    take a shipped name)."""
    detector: str = ""
    """The CLIP4DM detector: any name `feedback.MisalignmentDetector.from_pretrained` accepts
    (e.g. ViT-B-32, an open_clip hub id) or a local folder. Empty = the recipe's default:
    ShapesWorld's shipped shapes-tiny-gen with ShapesWorld prompts, the real CLIP
    openai/clip-vit-large-patch14 with --prompts (offline: name a local one)."""
    eps: float | None = None
    """The detector's threshold (a word is flagged below it). Default: when the shipped
    ShapesWorld pipeline is trained, the loop eps its card calibrated for the detector; else
    the detector's own card, or the paper's -5e-5."""
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
    train: str = "lora"
    """What is trained: lora (adapters of rank `rank` on the UNet's attention, saved as
    OUTPUT/lora for `pipe.load_lora_weights`) or full (every UNet weight, saved as the diffusers
    UNet folder OUTPUT/unet)."""
    rank: int = 8
    """LoRA rank."""
    sample_steps: int | None = None
    """Sampling steps (default: the card beside the trained pipeline's weights, else the
    pipeline's own call default)."""
    guidance: float | None = None
    """Guidance scale (default: as `sample_steps`)."""
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
    """The older name of --anchors (the same folder)."""
    anchors: str = ""
    """A folder of your own anchor image-caption pairs: a metadata.jsonl with file_name and
    text (the Hugging Face imagefolder convention) and/or a same-stem .txt caption beside each
    image. Used wherever the recipe uses anchors (--anchor-fraction; the anchors-only
    control). Empty = the recipe's own (ShapesWorld renders, with ShapesWorld prompts only)."""
    prompts: str = ""
    """A file of your training prompts (UTF-8, one a line, empty lines skipped, weight syntax
    allowed): each round's prompts cycle through it in a seeded shuffle (--seed) instead of
    ShapesWorld's prompt generator. Empty = ShapesWorld."""
    validation_prompts: str = ""
    """A file of validation prompts for --val-every (same format as --prompts); empty with
    --prompts = min(--val-prompts, a fifth) of the --prompts file held out (seeded)."""

    val_every: int = 0
    """Validate every this many rounds (the base before training, and the last round too) on
    the recipe's validation prompts and keep the best in OUTPUT/best (early stopping: the
    result is the best validated round, not the last); 0 = no validation."""
    val_prompts: int = 256
    """Validation prompts (one image each, fixed seeds; a split no training or test prompt
    comes from). Fewer is noisy: at 64 on ShapesWorld one prompt is 1.6 points, and the best
    of five validations picked a round 5.3 points below the base on the test prompts."""

    RANGES: ClassVar[dict] = {
        "val_every": NONNEG_INT,
        "val_prompts": COUNT,
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
        if self.train not in MODES:
            raise ValueError(f"--train must be one of {MODES}, got {self.train!r}")
        if self.anchors and self.anchor_dir and self.anchors != self.anchor_dir:
            raise ValueError("--anchors and --anchor-dir name two folders: give one")
        if self.validation_prompts and not self.prompts:
            raise ValueError("--validation-prompts needs --prompts (your training prompts)")
        # the prompt files are checked here: a missing or empty file is one line up front
        from .prompts import read_prompts

        if self.prompts:
            read_prompts(self.prompts, "--prompts")
        if self.validation_prompts:
            read_prompts(self.validation_prompts, "--validation-prompts")

    @property
    def anchor_folder(self) -> tuple[str, str]:
        """(the anchor folder or "", the flag that named it)."""
        if self.anchors:
            return self.anchors, "--anchors"
        return self.anchor_dir, "--anchor-dir"

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def result_name(self) -> str:
        """The folder under `output_dir` holding the last round's weights."""
        return "lora" if self.train == "lora" else "unet"


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
    # every process writes its own random state into `tmp`: all of them must have finished
    # before the main process renames the folder (under load a rank still writing found its
    # folder gone and died: the old "flaky under heavy load" two-rank test)
    accelerator.wait_for_everyone()
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


def _trim_log(path: Path, start: int) -> list[dict]:
    """Keep only the lines of rounds before `start` (the rounds the checkpoint holds: a kill
    between a round's log line and its checkpoint runs that round again; a line cut short by
    the kill is dropped too) and return them."""
    if not path.is_file():
        return []
    kept = [x for x in path.read_text().splitlines() if _logged_round(x) < start]
    path.write_text("".join(x + "\n" for x in kept))
    return [json.loads(x) for x in kept]


def _resolve_pipeline(pipeline, cfg: RoundsConfig, device):
    """(the pipeline `run_rounds` trains, whether the caller lent it): `pipeline` itself, what
    `pipeline(device)` returns, or `DiffusionPipeline.from_pretrained(cfg.pipeline)`. Only
    pipelines whose denoiser is a UNet conditioned on one text encoder (SD 1.x/2.x) are
    trained; anything else is refused naming its family."""
    from generation.adapters import adapter_for

    lent = False
    if pipeline is None:
        from diffusers import DiffusionPipeline

        try:
            pipe = DiffusionPipeline.from_pretrained(cfg.pipeline)
        except (OSError, ValueError) as e:
            raise ValueError(f"--pipeline {cfg.pipeline!r} does not load: {e}") from None
    elif callable(pipeline) and not hasattr(pipeline, "components"):
        pipe = pipeline(str(device))
    else:
        pipe, lent = pipeline, True
    family = adapter_for(pipe)  # refused before anything is moved or trained
    if family.family != "sd":
        raise ValueError(
            f"the fine-tuning recipes train SD 1.x/2.x pipelines (a UNet on one CLIP text "
            f"encoder); {type(pipe).__name__} is {family.title}"
        )
    return pipe, lent


def _ready_to_train(pipe, device):
    """fp32 weights to train (mixed precision comes from `accelerate launch`) on `device`, no
    progress bars; a pipeline already there is not moved again (diffusers warns on every
    such move)."""
    if pipe.dtype != torch.float32 or pipe.device != torch.device(device):
        pipe = pipe.to(device=device, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_pipeline_for(pipeline, cfg: RoundsConfig, device):
    """The pipeline to train (`pipeline` itself, what `pipeline(device)` returns, or
    `DiffusionPipeline.from_pretrained(cfg.pipeline)`; SD 1.x/2.x only), in fp32 on `device`
    with its progress bars off."""
    return _ready_to_train(_resolve_pipeline(pipeline, cfg, device)[0], device)


class _LentPipeline:
    """What `run_rounds` changes on a pipeline the caller lent it, recorded before and put
    back after: each component's device and dtype, parameters' `requires_grad`, modules'
    train/eval mode, the progress-bar config, and the UNet itself (the LoRA adapters added
    are unloaded; fully trained weights are restored from the frozen copy)."""

    def __init__(self, pipe):
        self.pipe = pipe
        self.modules = {
            name: m for name, m in pipe.components.items() if isinstance(m, torch.nn.Module)
        }
        self.placement = {}
        for name, m in self.modules.items():
            first = next(iter(m.parameters()), None)
            if first is not None:
                self.placement[name] = (first.device, first.dtype)
        self.grads = {
            (name, k): p.requires_grad
            for name, m in self.modules.items()
            for k, p in m.named_parameters()
        }
        self.modes = {
            (name, k): sub.training
            for name, m in self.modules.items()
            for k, sub in m.named_modules()
        }
        self.progress = (
            dict(pipe._progress_bar_config) if hasattr(pipe, "_progress_bar_config") else None
        )
        self.adapters = set(getattr(pipe.unet, "peft_config", None) or {})

    def restore(self) -> None:
        from .trainable import _REFERENCES

        pipe, unet = self.pipe, self.pipe.unet
        added = set(getattr(unet, "peft_config", None) or {}) - self.adapters
        if added and not self.adapters:
            unet.unload_lora()  # the LoRA layers go: the UNet's modules are its own again
        elif added:
            unet.delete_adapters(sorted(added))
        ref = _REFERENCES.pop(unet, None)
        if ref is not None:  # trained whole: its weights from the copy taken before training
            with torch.no_grad():
                unet.load_state_dict(ref.state_dict())
        for name, (device, dtype) in self.placement.items():
            m = self.modules[name]
            first = next(iter(m.parameters()), None)
            if first is not None and (first.device, first.dtype) != (device, dtype):
                m.to(device=device, dtype=dtype)
        for name, m in self.modules.items():
            for k, p in m.named_parameters():
                p.requires_grad_(self.grads.get((name, k), p.requires_grad))
            for k, sub in m.named_modules():
                sub.training = self.modes.get((name, k), sub.training)
        if self.progress is None:
            if hasattr(pipe, "_progress_bar_config"):
                del pipe._progress_bar_config
        else:
            pipe._progress_bar_config = self.progress


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


@dataclass
class RoundsResult:
    """What `run_rounds` returns (`to_dict()`: the flat record the recipes print)."""

    rounds_done: int
    process_index: int
    num_processes: int
    lora_digest: str
    """Digest of whatever was trained (the LoRA or the whole UNet): ranks must agree."""
    last_round: dict = field(default_factory=dict)
    """The last round's log record (empty when no round ran: a resumed finished run)."""
    best_round: int | None = None
    """With validation: the best validated round (-1: the base), else None."""
    best_val: float | None = None

    def to_dict(self) -> dict:
        d = {
            **self.last_round,
            "process_index": self.process_index,
            "num_processes": self.num_processes,
            "rounds_done": self.rounds_done,
            "lora_digest": self.lora_digest,
        }
        if self.best_round is not None:
            d.update(best_round=self.best_round, best_val=self.best_val)
        return d


@dataclass
class _Run:
    """One run's state, shared by its stages (`run_rounds`: sample, select, train, validate,
    save)."""

    cfg: RoundsConfig
    accelerator: object
    pipe: object
    unet: torch.nn.Module  # the prepared module: training forwards go through it
    opt: torch.optim.Optimizer
    out: Path
    validate: Validator | None
    vals: list[dict]
    log: object

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    def seed(self, r: int) -> int:
        """Every random draw is seeded by (seed, round, process): a resumed run repeats
        exactly."""
        return (
            10_000_000 * (self.cfg.seed + 1) + 100_000 * r + 1000 * self.accelerator.process_index
        )

    def sample(self, r: int, prompts_for, collect) -> tuple[list[str], Collected]:
        """The round's prompts (this process's) and what the recipe collected from them."""
        cfg, base = self.cfg, self.seed(r)
        self.pipe.unet.eval()
        drawn = prompts_for(r, self.accelerator.process_index)
        return drawn, collect(
            self.pipe,
            drawn,
            list(range(base, base + cfg.images_per_prompt * cfg.prompts_per_round)),
        )

    def train(self, got: Collected, objective, gen, rng) -> tuple[list[float], Callable]:
        """`cfg.steps_per_round` optimizer steps (times the accumulation) on random minibatches
        of the objective's items; (the losses, the loss function)."""
        cfg, accelerator = self.cfg, self.accelerator
        n_items, loss_fn = objective(self.pipe, got, gen, cfg)
        self.pipe.unet.train()
        losses = []
        for _ in range(cfg.steps_per_round * cfg.gradient_accumulation_steps):
            idx = torch.from_numpy(rng.choice(n_items, size=min(cfg.batch_size, n_items)))
            with accelerator.accumulate(self.unet):
                loss = loss_fn(self.unet, idx)
                accelerator.backward(loss)
                self.opt.step()
                self.opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
        return losses, loss_fn

    def validation(self, r: int) -> dict:
        """Validate after round r (-1: the base), keep the weights if they are the best yet."""
        self.pipe.unet.eval()
        score = float(self.validate(self.pipe))
        vals = self.vals
        best = not vals or score > max(v["val"] for v in vals)  # ties keep the earlier round
        rec = {"round": r, "val": score, "best": best}
        vals.append(rec)
        if best:
            save_trained(
                self.accelerator.unwrap_model(self.unet), self.cfg.train, self.out / "best"
            )
            (self.out / "best.json").write_text(json.dumps(rec))
        with open(self.out / "validation.jsonl", "a") as f:  # after the weights: a kill in
            f.write(json.dumps(rec) + "\n")  # between re-validates
        return rec

    def save(self, r: int, rec: dict) -> None:
        """The round's log line, then the checkpoint, then the round's weights."""
        if self.main:  # the log line first: a kill before the checkpoint only repeats the round
            self.log.write(json.dumps(rec) + "\n")
            self.log.flush()
        _save_checkpoint(self.accelerator, self.out, r + 1)
        if self.main:
            save_trained(
                self.accelerator.unwrap_model(self.unet),
                self.cfg.train,
                self.out / self.cfg.result_name,
            )


def _select(cfg: RoundsConfig, got: Collected, objective, anchors, rng):
    """What the round learns from: the collected images, with `cfg.anchor_fraction` of anchor
    pairs mixed in for the denoising objective; (collected, kept, anchors mixed in, their
    captions)."""
    kept = len(got.prompts)
    n_anchor, anchor_captions = 0, []
    if cfg.anchor_fraction > 0 and objective is denoising_objective:
        got, n_anchor = with_anchors(got, anchors, cfg.anchor_fraction, rng)
        anchor_captions = got.prompts[kept:]
    return got, kept, n_anchor, anchor_captions


def run_rounds(
    cfg: RoundsConfig,
    collect: Callable[..., Collected],
    prompts_for: Callable[[int, int], list[str]],
    name: str = "finetune",
    objective: Callable = denoising_objective,
    anchors: AnchorSource | None = None,
    *,
    pipeline=None,
    validate: Validator | None = None,
) -> RoundsResult:
    """Run `cfg.rounds` rounds (from the checkpoint with `cfg.resume`).

    collect(pipe, prompts, seeds): the round's images to learn from (seeds: one per image the
        round may generate, `images_per_prompt` per prompt, prompt-major).
    prompts_for(round, process_index): that process's training prompts for the round (the
        prompt source).
    objective(pipe, collected, generator, cfg) -> (n_items, loss_fn(unet, idx)): what the
        optimizer steps minimize on random minibatches of the round's items (default:
        denoising).
    anchors(n, rng) -> (images, captions): the recipe's anchor data (`generation.finetune.
        anchors`), mixed in at `cfg.anchor_fraction` (`cfg.anchors` / `cfg.anchor_dir`, a
        folder of the user's pairs, overrides it).
    pipeline: a diffusers pipeline, a function of the device that returns one, or None for
        `DiffusionPipeline.from_pretrained(cfg.pipeline)`.
    validate(pipe) -> score (higher is better; `generation.finetune.reward_validator`): run by
        the main process on the base and every `cfg.val_every` rounds; the best round's weights
        are kept in OUTPUT/best and each score in OUTPUT/validation.jsonl.
    Returns a `RoundsResult`: the last round's log record, the run's `lora_digest` (the digest
    of whatever was trained), and with validation `best_round` (-1: the base) and `best_val`.

    A pipeline object lent as `pipeline` is given back as it was found (device and dtype,
    `requires_grad`, train/eval modes, progress-bar config, no LoRA added, its own weights);
    the result is on disk (OUTPUT/lora or OUTPUT/unet, OUTPUT/best). The process's torch
    thread count, set to `cfg.threads` while it runs, is put back too.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _run_rounds(cfg, collect, prompts_for, name, objective, anchors, pipeline, validate)
    finally:
        torch.set_num_threads(threads)


def _run_rounds(cfg, collect, prompts_for, name, objective, anchors, pipeline, validate):
    from accelerate import Accelerator

    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(),
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
    )
    if cfg.val_every and validate is None:
        raise ValueError("--val-every needs validation prompts: this recipe has no validator")
    out = Path(cfg.output_dir)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    accelerator.wait_for_everyone()  # the folder exists before any process writes into it
    pipe, lent = _resolve_pipeline(pipeline, cfg, accelerator.device)
    found = _LentPipeline(pipe) if lent else None
    try:
        pipe = _ready_to_train(pipe, accelerator.device)
        return _train_rounds(
            cfg, accelerator, pipe, out, collect, prompts_for, name, objective, anchors, validate
        )
    finally:
        if found is not None:
            found.restore()


def _train_rounds(
    cfg, accelerator, pipe, out, collect, prompts_for, name, objective, anchors, validate
) -> RoundsResult:
    folder, flag = cfg.anchor_folder
    if folder:
        anchors = folder_anchors(folder, _image_size(pipe), flag)
    if cfg.anchor_fraction > 0 and anchors is None:
        raise ValueError(
            "--anchor-fraction > 0 needs anchor data: pass --anchors DIR (images with .txt "
            "captions or a metadata.jsonl) or use a recipe that provides its own"
        )
    params = make_trainable(pipe.unet, cfg.train, rank=cfg.rank, seed=cfg.seed)
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
    main = accelerator.is_main_process
    log_path, val_path = out / "log.jsonl", out / "validation.jsonl"
    vals: list[dict] = []
    if main:
        _trim_log(log_path, start)
        vals = _trim_log(val_path, start)
    log = open(log_path, "a") if main else None
    run = _Run(cfg, accelerator, pipe, unet, opt, out, validate, vals, log)
    try:
        if main and cfg.val_every and not vals:  # (val_every without a validator raised above)
            run.validation(-1)
        rec: dict = {}
        for r in tqdm(range(start, cfg.rounds), desc=name, disable=not main):
            t0 = time.perf_counter()
            drawn, got = run.sample(r, prompts_for, collect)
            gen = torch.Generator().manual_seed(run.seed(r))
            rng = np.random.default_rng([cfg.seed, r, rank])
            got, kept, n_anchor, anchor_captions = _select(cfg, got, objective, anchors, rng)
            losses, loss_fn = run.train(got, objective, gen, rng)
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
                # what the round drew (this process's): an audit of the prompt and anchor sources
                "prompts": list(drawn),
                **({"anchor_captions": anchor_captions} if n_anchor else {}),
            }
            due = cfg.val_every and ((r + 1) % cfg.val_every == 0 or r + 1 == cfg.rounds)
            if main and due:
                rec["val"] = run.validation(r)["val"]
                rec["seconds"] = round(time.perf_counter() - t0, 2)  # validation included
            run.save(r, rec)
    finally:
        if log is not None:
            log.close()
    result = RoundsResult(
        rounds_done=cfg.rounds,
        process_index=rank,
        num_processes=world,
        lora_digest=trained_digest(accelerator.unwrap_model(unet), cfg.train),
        last_round=rec,
    )
    if vals:
        best = max(vals, key=lambda v: (v["val"], -v["round"]))
        result.best_round, result.best_val = best["round"], best["val"]
    return result
