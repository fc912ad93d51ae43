"""ShapesWorld wired into the fine-tuning trainer (`generation.finetune.run_rounds`, which
knows nothing of it): the shipped pipeline by name, each round's training prompts, the
validation split judged by the pixel oracle, and rendered anchor scenes.

The oracle on validation prompts plays the part of a user's small labelled validation set:
it picks the round to keep, and the benchmark's test prompts (another seed) are judged once,
at the end."""

from __future__ import annotations

from collections.abc import Callable

import torch

from generation.finetune import Collected, RoundsConfig, reward_validator, run_rounds
from shapesworld.data import anchor_source
from shapesworld.pipelines import (
    FINETUNE_SEED,
    FINETUNE_VALIDATION_SEED,
    judge_tensor,
    load_pipeline,
    pipeline_path,
    prompt_set,
)


def shipped_loader(name: str):
    """`load_pipeline(name)` as a function of the device for a shipped pipeline's name; None
    for anything else (a folder or model id, which the trainer loads with diffusers)."""
    try:
        pipeline_path(name)
    except FileNotFoundError:
        return None
    return lambda device: load_pipeline(name, device=device)


def training_prompts(cfg: RoundsConfig) -> Callable[[int, int], list[str]]:
    """Round r, process k: `cfg.prompts_per_round` prompts from seed FINETUNE_SEED + 1000 r + k
    (one- and two-object prompts alternating)."""

    def prompts_for(r: int, rank: int) -> list[str]:
        seed = FINETUNE_SEED + 1000 * r + rank
        return [p.text for p in prompt_set(cfg.prompts_per_round, seed=seed)]

    return prompts_for


def oracle_verdicts(images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """(N,) 1.0 where the pixel oracle finds the whole prompt satisfied, else 0.0."""
    return torch.tensor([float(judge_tensor(im, p).all_correct) for im, p in zip(images, prompts)])


def oracle_validator(cfg: RoundsConfig):
    """Share of `cfg.val_prompts` validation prompts (one- and two-object alternating) whose
    image the oracle finds right, at the recipe's sampling settings."""
    prompts = [p.text for p in prompt_set(cfg.val_prompts, seed=FINETUNE_VALIDATION_SEED)]
    return reward_validator(
        prompts,
        oracle_verdicts,
        seed=7000,
        num_inference_steps=cfg.sample_steps,
        guidance_scale=cfg.guidance,
    )


def run_shapes_rounds(
    cfg: RoundsConfig,
    collect: Callable[..., Collected],
    name: str,
    *,
    anchors: bool = True,
    **kwargs,
) -> dict:
    """`run_rounds` on ShapesWorld: the pipeline `cfg.pipeline` (a shipped name or a folder),
    the recipes' training prompts, oracle validation when `cfg.val_every` is set, and
    rendered anchors (for denoising objectives)."""
    return run_rounds(
        cfg,
        collect,
        training_prompts(cfg),
        name=name,
        anchors=anchor_source() if anchors else None,
        pipeline=shipped_loader(cfg.pipeline),
        validate=oracle_validator(cfg) if cfg.val_every else None,
        **kwargs,
    )
