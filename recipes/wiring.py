"""The recipes' wiring of the fine-tuning trainer (`generation.finetune.run_rounds`, which
knows nothing of ShapesWorld): by default ShapesWorld (the shipped pipeline by name, each
round's training prompts, the validation split judged by the pixel oracle, rendered anchor
scenes); with `--prompts FILE` the user's own prompts (cycled in a seeded shuffle, a held-out
slice or `--validation-prompts FILE` validated by the detector's reward) and, with
`--anchors DIR`, their own anchor pairs.

The oracle on validation prompts plays the part of a user's small labelled validation set:
it picks the round to keep, and the benchmark's test prompts (another seed) are judged once,
at the end. Without an oracle (your prompts) the validation score is the mean F-CLIPScore
reward (`recipes.finetune_reward_filtered.make_reward`)."""

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


def user_prompts(cfg: RoundsConfig) -> tuple[list[str], list[str]]:
    """(training, validation) prompts of `cfg.prompts` / `cfg.validation_prompts`, weight
    syntax kept: the validation file, or (with `cfg.val_every`) min(`cfg.val_prompts`, a
    fifth) of the training file held out by a seeded shuffle; no validation prompts without
    `cfg.val_every`."""
    from generation.finetune.prompts import read_prompts, split_validation

    prompts = read_prompts(cfg.prompts, "--prompts")
    if cfg.validation_prompts:
        return prompts, read_prompts(cfg.validation_prompts, "--validation-prompts")
    if not cfg.val_every:
        return prompts, []
    return split_validation(prompts, min(cfg.val_prompts, max(1, len(prompts) // 5)), cfg.seed)


def training_prompts(
    cfg: RoundsConfig, keep_syntax: bool = False
) -> Callable[[int, int], list[str]]:
    """Round r, process k: `cfg.prompts_per_round` prompts. With `cfg.prompts`: the file's
    training prompts cycled in a seeded shuffle (`generation.finetune.prompts.cycling_prompts`,
    all processes reading one stream), without their weight syntax unless `keep_syntax` (for
    a generator that reads it); else ShapesWorld's, from seed FINETUNE_SEED + 1000 r + k (one-
    and two-object prompts alternating)."""
    if cfg.prompts:
        from accelerate import PartialState

        from generation.finetune.prompts import clean, cycling_prompts

        train, _ = user_prompts(cfg)
        cycle = cycling_prompts(train, cfg.prompts_per_round, cfg.seed)

        def from_file(r: int, rank: int) -> list[str]:
            drawn = cycle(r, rank, PartialState().num_processes)
            return drawn if keep_syntax else [clean(p) for p in drawn]

        return from_file

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


def detector_validator(cfg: RoundsConfig, prompts: list[str]):
    """Mean reward of one image per validation prompt (weight syntax removed), the reward
    being the recipes' F-CLIPScore (`make_reward`, loaded on first use on the pipeline's
    device)."""
    from generation.finetune.prompts import clean
    from recipes.finetune_reward_filtered import make_reward

    state: dict = {}

    def reward(images, texts):
        if "r" not in state:
            state["r"] = make_reward(
                cfg.detector, "f_clip_score", images.device, eps=cfg.eps, pipeline=cfg.pipeline
            )
        return state["r"](images, texts)

    return reward_validator(
        [clean(p) for p in prompts],
        reward,
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
    keep_syntax: bool = False,
    **kwargs,
) -> dict:
    """`run_rounds` with the recipes' wiring: the pipeline `cfg.pipeline` (a shipped name or a
    folder or model id), the training prompts (`training_prompts`: `cfg.prompts` or
    ShapesWorld's), validation when `cfg.val_every` is set (the oracle on ShapesWorld, the
    detector's reward on your prompts) and anchors for denoising objectives (`cfg.anchors`,
    which `run_rounds` reads; else rendered scenes, with ShapesWorld prompts only)."""
    validate = None
    if cfg.val_every:
        validate = (
            detector_validator(cfg, user_prompts(cfg)[1]) if cfg.prompts else oracle_validator(cfg)
        )
    return run_rounds(
        cfg,
        collect,
        training_prompts(cfg, keep_syntax),
        name=name,
        anchors=anchor_source() if anchors and not cfg.prompts else None,
        pipeline=shipped_loader(cfg.pipeline),
        validate=validate,
        **kwargs,
    )
