"""The recipes' wiring of the fine-tuning library (`generation.finetune`: the round loop
`run_rounds` and the rewards, which know nothing of ShapesWorld): by default ShapesWorld (the
shipped pipeline by name, each round's training prompts, the validation split judged by the
pixel oracle, rendered anchor scenes, the shipped detector `shapes-tiny-gen`, the oracle
rewards); with `--prompts FILE` the user's own prompts (cycled in a seeded shuffle, a
held-out slice or `--validation-prompts FILE` validated by the detector's reward, the real
CLIP `feedback.DEFAULT_MODEL` unless `--detector` names another) and, with
`--anchors DIR`, their own anchor pairs.

The oracle on validation prompts plays the part of a user's small labelled validation set:
it picks the round to keep, and the benchmark's test prompts (another seed) are judged once,
at the end. Without an oracle (your prompts) the validation score is the mean F-CLIPScore
reward (`recipe_reward`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from feedback import DEFAULT_MODEL
from generation.finetune import (
    Collected,
    RoundsConfig,
    RoundsResult,
    reward_validator,
    run_rounds,
)
from generation.finetune import rewards as lib_rewards
from shapesworld.data import anchor_source
from shapesworld.pipelines import (
    FINETUNE_SEED,
    FINETUNE_VALIDATION_SEED,
    PIPELINE_NAME,
    judge_tensor,
    load_pipeline,
    pipeline_path,
    prompt_set,
)

#: The detector with ShapesWorld prompts (shipped, tuned on the shipped pipeline's images).
SHAPES_DETECTOR = "shapes-tiny-gen"


@dataclass
class RecipeConfig(RoundsConfig):
    """`RoundsConfig` with the recipes' default detector: an empty `detector` becomes
    `SHAPES_DETECTOR` with ShapesWorld prompts, `DEFAULT_MODEL` (the real CLIP) with
    `--prompts` (no fields of its own: the flags are `RoundsConfig`'s)."""

    def __post_init__(self):
        super().__post_init__()
        if not self.detector:
            self.detector = DEFAULT_MODEL if self.prompts else SHAPES_DETECTOR
        if self.sample_steps is None or self.guidance is None:
            steps, guidance = sampling_defaults(self.pipeline)
            if self.sample_steps is None:
                self.sample_steps = steps
            if self.guidance is None:
                self.guidance = guidance


def sampling_defaults(pipeline: str | None) -> tuple[int, float]:
    """(steps, guidance) for sampling the trained pipeline: the card's `call_defaults` in its
    folder (`generation.cards`; the shipped pipeline's: 20, 4), else Stable Diffusion's own
    call defaults (the recipes train SD UNets)."""
    import inspect

    from diffusers import StableDiffusionPipeline

    from generation.cards import PipelineCard

    folder = pipeline_folder(pipeline)
    card = PipelineCard.load(folder) if Path(folder).is_dir() else None
    own = inspect.signature(StableDiffusionPipeline.__call__).parameters
    cd = card.call_defaults if card is not None else {}
    return (
        int(cd.get("num_inference_steps", own["num_inference_steps"].default)),
        float(cd.get("guidance_scale", own["guidance_scale"].default)),
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


def oracle_word_shares(images: torch.Tensor, prompts: list[str]) -> list[float]:
    """(N,) the share of each prompt's judged words the pixel oracle finds right in its image
    (0 when it judges none)."""
    share = []
    for im, p in zip(images, prompts):
        v = [w.correct for w in judge_tensor(im, p).words if w.correct is not None]
        share.append(sum(v) / len(v) if v else 0.0)
    return share


#: ShapesWorld's ground-truth rewards (`make_reward`'s verdicts): the pixel oracle's verdict on
#: the whole prompt, and the share of the prompt's words it finds right.
ORACLES = {"oracle": oracle_verdicts, "oracle_dense": oracle_word_shares}
#: The recipes' `--reward` values: the detector's (`generation.finetune.rewards.REWARDS`) and
#: ShapesWorld's oracles.
REWARDS = (*lib_rewards.REWARDS, *ORACLES)


def check_reward(cfg) -> None:
    """`cfg.reward` is known, and an oracle reward comes with ShapesWorld prompts."""
    if cfg.reward not in REWARDS:
        raise ValueError(f"--reward must be one of {REWARDS}, got {cfg.reward!r}")
    if cfg.reward.startswith("oracle") and cfg.prompts:
        raise ValueError(
            f"--reward {cfg.reward} is ShapesWorld's pixel oracle: it judges ShapesWorld "
            "prompts only; with --prompts use f_clip_score, regions or clip_score"
        )


def pipeline_folder(name: str | None) -> str:
    """The folder of a shipped pipeline's name (None or empty: the shipped default), else
    `name` itself (a folder or a hub id): where `generation.finetune.rewards.card_eps` looks
    for the card."""
    name = name or PIPELINE_NAME
    try:
        return str(pipeline_path(name))
    except FileNotFoundError:
        return name


def _default_detector_loads(cfg: RoundsConfig, load: Callable):
    """`load()`; when it fails for the default CLIP that `--prompts` brings (offline, it is not
    cached), one line that names a detector to pass instead."""
    from feedback.errors import Clip4dmError

    try:
        return load()
    except (Clip4dmError, OSError) as e:
        if not (cfg.prompts and cfg.detector == DEFAULT_MODEL):
            raise
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(
            f"--detector {DEFAULT_MODEL} (the default with --prompts) does not load: {first}; "
            f"name one that does: a local CLIP folder, or --detector {SHAPES_DETECTOR} "
            "(ShapesWorld's shipped detector, which knows ShapesWorld's words only)"
        ) from None


def recipe_detector(cfg: RoundsConfig, device):
    """The detector `cfg.detector` at `cfg.eps` (else the eps the trained pipeline's card
    calibrated for it: `generation.finetune.rewards.load_detector`)."""
    return _default_detector_loads(
        cfg,
        lambda: lib_rewards.load_detector(
            cfg.detector, device, cfg.eps, pipeline_folder(cfg.pipeline)
        ),
    )


def recipe_reward(cfg: RoundsConfig, which: str, device):
    """`generation.finetune.rewards.make_reward` on `cfg.detector` (threshold as for
    `recipe_detector`), with ShapesWorld's oracle rewards (`ORACLES`) among the choices."""
    return _default_detector_loads(
        cfg,
        lambda: lib_rewards.make_reward(
            cfg.detector, which, device, cfg.eps, pipeline_folder(cfg.pipeline), verdicts=ORACLES
        ),
    )


def detector_validator(cfg: RoundsConfig, prompts: list[str]):
    """Mean reward of one image per validation prompt (weight syntax removed), the reward
    being the recipes' F-CLIPScore (`recipe_reward`, loaded on first use on the pipeline's
    device)."""
    from generation.finetune.prompts import clean

    state: dict = {}

    def reward(images, texts):
        if "r" not in state:
            state["r"] = recipe_reward(cfg, "f_clip_score", images.device)
        return state["r"](images, texts)

    return reward_validator(
        [clean(p) for p in prompts],
        reward,
        seed=7000,
        num_inference_steps=cfg.sample_steps,
        guidance_scale=cfg.guidance,
    )


def run_recipe_rounds(
    cfg: RoundsConfig,
    collect: Callable[..., Collected],
    name: str,
    *,
    anchors: bool = True,
    keep_syntax: bool = False,
    **kwargs,
) -> RoundsResult:
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
