"""Train the tiny ShapesWorld CLIP (`shapes-tiny`) from scratch.

Usage (CPU; add --num_processes N on more devices):

    accelerate launch --cpu --num_processes 1 -m shapesworld.build.train_shapes_clip \
        --output-dir runs/shapes-tiny --steps 6000 --max-minutes 80

Fine-tuning for generated images (`shapes-tiny-gen`): start from the shipped model and mix in
an oracle-labelled pool from `shapesworld.build.generate_shapes_pool`:

    accelerate launch --cpu --num_processes 1 -m shapesworld.build.train_shapes_clip \
        --output-dir runs/shapes-tiny-gen --init-from shapesworld/weights/shapes-tiny \
        --generated-pool runs/pool --steps 2500 --lr 3e-4 --warmup 100 --max-minutes 30

Every batch is freshly rendered (no dataset on disk). Each image comes with its true caption
and `foils_per_image` hard negatives of different word kinds. The model is an open_clip `CLIP`
with CLIP's real BPE tokenizer. Checkpoints (`accelerator.save_state`) go to
`OUTPUT/checkpoint` and are resumed with `--resume`; an fp16 safetensors export loadable with
`open_clip.create_model_and_transforms("local-dir:OUTPUT/export")` is written every
`--export-every` steps and at the end, with the resolved config beside it.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import broadcast
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from feedback.backends import OpenClipBackend, text_forward
from generation.finetune.ranges import COUNT, NONNEG, NONNEG_INT, POSITIVE, SHARE, check_ranges
from recipes.cli import parse_config, run_recipe
from shapesworld import Degradation
from shapesworld.build.contrastive import (
    duplicate_mask,
    group_ranking_loss,
    hard_negative_clip_loss,
)
from shapesworld.data import (
    MEAN,
    STD,
    concat_batches,
    group_batch,
    make_batch,
    pool_batch,
    prompt_groups,
)
from shapesworld.generated import load_pool


def default_model_cfg() -> dict:
    """A 6-layer text tower, so that "the last 3 layers" is the late half as in a real CLIP
    rather than nearly all of it; a 32 px ViT with 4 px patches for the generator's 32 px
    images. (8 text layers cost 1.4x the step time on 2 CPU cores.)"""
    return {
        "embed_dim": 128,
        "vision_cfg": {
            "image_size": 32,
            "layers": 4,
            "width": 128,
            "head_width": 32,
            "patch_size": 4,
            "mlp_ratio": 4.0,
        },
        "text_cfg": {
            "context_length": 32,
            "vocab_size": 49408,
            "width": 128,
            "heads": 4,
            "layers": 6,
            "mlp_ratio": 4.0,
        },
    }


@dataclass
class TrainConfig:
    """Training configuration (all fields are command-line flags)."""

    output_dir: str = "runs/shapes-tiny"
    steps: int = 6000
    """Length of the cosine schedule (training may stop earlier at --max-minutes)."""
    max_minutes: float = 0.0
    """Stop (and export) after this wall time; 0 = no limit."""
    batch_size: int = 64
    foils_per_image: int = 3
    lr: float = 1e-3
    warmup: int = 200
    weight_decay: float = 0.1
    hard_weight: float = 1.0
    seed: int = 0
    resolution: int = 32
    degradation_p: float = 0.5
    save_every: int = 500
    export_every: int = 500
    resume: bool = False
    threads: int = 2
    init_from: str = ""
    """Start from an exported model folder (e.g. shapesworld/weights/shapes-tiny) instead of
    from scratch; its model config replaces --model-cfg."""
    generated_pool: str = ""
    """A folder from `python -m shapesworld.build.generate_shapes_pool`: mix oracle-labelled
    generated images (true caption from the pixels; the generator's failed prompt as a hard
    negative) into every batch."""
    generated_fraction: float = 0.5
    """Share of each batch drawn from --generated-pool."""
    group_prompts: int = 0
    """Prompts of --generated-pool per step whose images (some right, some wrong) are ranked
    against each other by their cosine with the templated prompt (`group_ranking_loss`):
    teaches the within-prompt choice that selection by CLIPScore makes. 0 = off."""
    group_weight: float = 1.0
    """Weight of that ranking loss."""
    model_cfg: dict = field(default_factory=default_model_cfg)

    RANGES: ClassVar[dict] = {
        "steps": COUNT,
        "max_minutes": NONNEG,
        "batch_size": COUNT,
        "foils_per_image": NONNEG_INT,
        "lr": POSITIVE,
        "warmup": NONNEG_INT,
        "weight_decay": NONNEG,
        "hard_weight": NONNEG,
        "seed": NONNEG_INT,
        "resolution": COUNT,
        "degradation_p": SHARE,
        "save_every": COUNT,
        "export_every": COUNT,
        "threads": COUNT,
        "generated_fraction": SHARE,
        "group_prompts": NONNEG_INT,
        "group_weight": NONNEG,
    }

    def __post_init__(self):
        check_ranges(self)


def export(model: torch.nn.Module, cfg: TrainConfig, out: Path, summary: dict) -> None:
    """fp16 safetensors + open_clip local-dir config + training summary."""
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    save_file(state, out / "open_clip_model.safetensors")
    preprocess = {
        "size": cfg.resolution,
        "mean": list(MEAN),
        "std": list(STD),
        "interpolation": "bicubic",
        "resize_mode": "shortest",
    }
    (out / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": cfg.model_cfg, "preprocess_cfg": preprocess}, indent=2)
    )
    (out / "training.json").write_text(json.dumps(summary, indent=2))


class ContrastiveForward(torch.nn.Module):
    """The training forward as one module, so that `accelerator.prepare` wraps *it*: under
    DDP, gradients are synchronized only for computations that go through the wrapper's
    forward (calling the unwrapped model, as this recipe once did, silently let the ranks
    diverge). The text side is the detector's own forward (`backends.text_forward`)."""

    def __init__(self, clip: torch.nn.Module, tokenizer):
        super().__init__()
        self.clip = clip
        # Not a submodule: a view over `clip` that leaves its mode and requires_grad alone.
        self._text = OpenClipBackend(clip, None, tokenizer, "training")

    def forward(self, images: torch.Tensor, ids: torch.Tensor):
        img = torch.nn.functional.normalize(self.clip.encode_image(images), dim=-1)
        # Cut after the batch's last EOT: exact (causal mask, read at EOT), ~1/3 cheaper.
        eot = self._text.eot_positions(ids)
        ids = ids[:, : int(eot.max()) + 1]
        txt = torch.nn.functional.normalize(text_forward(self._text, ids, eot), dim=-1)
        return img, txt, self.clip.logit_scale


def weights_digest(model: torch.nn.Module) -> str:
    """A short hash of every parameter's bytes (ranks of one DDP run must agree)."""
    import hashlib

    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def main(cfg: TrainConfig) -> dict:
    import open_clip

    torch.set_num_threads(cfg.threads)
    # On CPU-only machines ranks started by torchrun must be told to join over gloo.
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    out = Path(cfg.output_dir)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    torch.manual_seed(cfg.seed)
    if cfg.init_from:
        init = Path(cfg.init_from)
        cfg.model_cfg = json.loads((init / "open_clip_config.json").read_text())["model_cfg"]
    model = open_clip.model.CLIP(**cfg.model_cfg)
    if cfg.init_from:
        state = load_file(init / "open_clip_model.safetensors")
        model.load_state_dict({k: v.float() for k, v in state.items()})
    tokenizer = open_clip.tokenizer.SimpleTokenizer(
        context_length=cfg.model_cfg["text_cfg"]["context_length"]
    )
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [
        p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)
    ]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.lr,
    )

    def lr_at(step: int) -> float:
        if step < cfg.warmup:
            return (step + 1) / cfg.warmup
        t = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
        return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * t))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    forward, opt, sched = accelerator.prepare(ContrastiveForward(model, tokenizer), opt, sched)
    step = 0
    ckpt = out / "checkpoint"
    if cfg.resume and ckpt.exists():
        accelerator.load_state(str(ckpt))
        step = json.loads((ckpt / "step.json").read_text())["step"]
    rng = np.random.default_rng([cfg.seed, accelerator.process_index, step])
    degradation = Degradation(p=cfg.degradation_p)
    pool = load_pool(cfg.generated_pool) if cfg.generated_pool else None
    n_gen = round(cfg.batch_size * cfg.generated_fraction) if pool is not None else 0
    if cfg.group_prompts and pool is None:
        raise ValueError("--group-prompts needs --generated-pool")
    groups = prompt_groups(pool[1]) if cfg.group_prompts else []
    token_cache: dict[str, torch.Tensor] = {}

    def tokenize(texts: list[str]) -> torch.Tensor:
        missing = [t for t in texts if t not in token_cache]
        if missing:
            for t, ids in zip(missing, tokenizer(missing)):
                token_cache[t] = ids
        return torch.stack([token_cache[t] for t in texts])

    log = open(out / "log.jsonl", "a") if accelerator.is_main_process else None
    t0 = time.time()
    bar = tqdm(
        total=cfg.steps, initial=step, disable=not accelerator.is_main_process, desc="shapes-tiny"
    )
    running: dict[str, float] = {}
    kinds_seen: dict[str, list[float]] = {}
    while step < cfg.steps:
        batch = make_batch(
            rng,
            cfg.batch_size - n_gen,
            foils_per_image=cfg.foils_per_image,
            resolution=cfg.resolution,
            degradation=degradation,
        )
        if n_gen:
            batch = concat_batches(
                batch, pool_batch(rng, *pool, n_gen, foils_per_image=cfg.foils_per_image)
            )
        texts = batch.captions + [f for fs in batch.foils for f in fs]
        images = batch.images
        if groups:
            gb = group_batch(rng, *pool, groups, cfg.group_prompts)
            images = torch.cat([images, gb.images])
            texts = texts + gb.texts
        images = images.to(accelerator.device)
        ids = tokenize(texts).to(accelerator.device)
        img, txt, logit_scale = forward(images, ids)
        n_img, n_txt = cfg.batch_size, cfg.batch_size * (1 + cfg.foils_per_image)
        loss, stats = hard_negative_clip_loss(
            img[:n_img],
            txt[:n_txt],
            logit_scale,
            cfg.batch_size,
            cfg.foils_per_image,
            duplicate_mask(texts[:n_txt], batch.captions),
            cfg.hard_weight,
        )
        if groups:
            loss_g, stats_g = group_ranking_loss(img[n_img:], txt[n_txt:], logit_scale, gb.right)
            loss = loss + cfg.group_weight * loss_g
            stats.update(stats_g)
        accelerator.backward(loss)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        step += 1
        for k in ("loss", "loss_hard", "acc_retrieval", "loss_group", "group_top_right"):
            if k not in stats:
                continue
            running[k] = 0.98 * running.get(k, stats[k]) + 0.02 * stats[k]
        for b, ks in enumerate(batch.foil_kinds):
            for j, k in enumerate(ks):
                kinds_seen.setdefault(k, []).append(float(stats["prefer_true"][b, j]))
        bar.update(1)
        if step % 20 == 0:
            bar.set_postfix(loss=f"{running['loss']:.3f}", ret=f"{running['acc_retrieval']:.2f}")
        if log is not None and step % 50 == 0:
            rec = {
                "step": step,
                "minutes": (time.time() - t0) / 60,
                "lr": sched.get_last_lr()[0],
                **{k: round(v, 4) for k, v in running.items()},
                **{
                    f"prefer_true_{k}": round(float(np.mean(v[-2000:])), 4)
                    for k, v in kinds_seen.items()
                },
            }
            log.write(json.dumps(rec) + "\n")
            log.flush()
        # Rank 0's clock decides for everyone: a per-rank decision could leave one rank in
        # save_state's collective while another has left the loop.
        timed_out = bool(cfg.max_minutes) and (time.time() - t0) / 60 >= cfg.max_minutes
        flag = torch.tensor([float(timed_out)], device=accelerator.device)
        timed_out = bool(broadcast(flag, from_process=0).item())
        if step % cfg.save_every == 0 or timed_out:
            accelerator.save_state(str(ckpt))
            if accelerator.is_main_process:
                (ckpt / "step.json").write_text(json.dumps({"step": step}))
        if accelerator.is_main_process and (step % cfg.export_every == 0 or timed_out):
            export(model, cfg, out / "export", _summary(step, t0, running, kinds_seen, cfg))
        if timed_out:
            break
    bar.close()
    summary = _summary(step, t0, running, kinds_seen, cfg)
    summary["process_index"] = accelerator.process_index
    summary["num_processes"] = accelerator.num_processes
    summary["weights_digest"] = weights_digest(model)
    if accelerator.is_main_process:
        export(model, cfg, out / "export", summary)
    return summary


def _summary(step, t0, running, kinds_seen, cfg=None) -> dict:
    return {
        **(
            {"init_from": cfg.init_from, "generated_pool": cfg.generated_pool, "lr": cfg.lr}
            if cfg is not None and cfg.init_from
            else {}
        ),
        "steps": step,
        "minutes_this_run": round((time.time() - t0) / 60, 2),
        **{k: round(v, 4) for k, v in running.items()},
        **{f"prefer_true_{k}": round(float(np.mean(v[-2000:])), 4) for k, v in kinds_seen.items()},
    }


def parse_args(argv=None) -> TrainConfig:
    return parse_config(TrainConfig, argv, description=__doc__)


if __name__ == "__main__":
    run_recipe(main, parse_args)
