"""Reward-filtered LoRA fine-tuning: generate, score, learn from the best image of each prompt
(best-of-N distillation, as in RAFT / ReST), in rounds.

    accelerate launch --cpu --num_processes 1 recipes/finetune_reward_filtered.py \
        --output-dir runs/reward-filtered --rounds 8 [--reward clip_score] \
        [--config run.yaml] [--resume]

On your own model and prompts (weight syntax in the file is stripped: these recipes generate
with the plain pipeline call):

    accelerate launch recipes/finetune_reward_filtered.py --output-dir runs/mine \
        --pipeline ./my-sd15 --prompts prompts.txt [--validation-prompts val.txt \
        --val-every 2] --detector ViT-B-32 [--eps -5e-5] \
        [--anchors ./my-pairs --anchor-fraction 0.3] --rounds 8

Each round every process draws its own training prompts (ShapesWorld's from seeds no
benchmark uses, or `--prompts FILE` cycled in a seeded shuffle), generates
`images_per_prompt` images of each with the current LoRA, scores them (`--reward
f_clip_score`: `feedback.FeedbackReward`, F-CLIPScore in units of the detector's eps, ties
broken by CLIPScore; `clip_score`: the CLIPScore twin at equal compute), keeps the best image
of each prompt and takes `steps_per_round` denoising steps on the kept images with LoRA on the
UNet's attention (peft). The round loop (`generation.finetune.run_rounds`): data parallel
through accelerate (gradients averaged over processes), gradient accumulation,
`--mixed_precision` from `accelerate launch`, `accelerator.save_state` into
`OUTPUT/checkpoint` after every round (swapped in whole, so a kill never leaves half a
checkpoint), the LoRA in `OUTPUT/lora` (`pipe.load_lora_weights(OUTPUT/lora)` reads it), and
every random draw seeded by (seed, round, process): `--resume` after a kill ends with the same
LoRA as an uninterrupted run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from generation.finetune import Collected, RoundsConfig, sample_round
from generation.finetune.ranges import Range
from recipes.cli import parse_config, run_recipe
from recipes.shapes_rounds import oracle_verdicts, run_shapes_rounds

REWARDS = ("f_clip_score", "regions", "clip_score", "oracle", "oracle_dense")


@dataclass
class FilteredConfig(RoundsConfig):
    """Reward-filtered fine-tuning (every field is a command-line flag)."""

    output_dir: str = "runs/reward-filtered"
    reward: str = "f_clip_score"
    """f_clip_score (CLIP4DM, ties by CLIPScore), clip_score (the twin) or oracle (the
    ShapesWorld ceiling: the pixel oracle's verdict, ties by CLIPScore; not a detector)."""
    keep_fraction: float = 0.5
    """Of the prompts' best images, learn only from this top share by reward across the
    round (RAFT's global filter: a prompt whose best image is still poor teaches nothing)."""
    min_reward: float = float("-inf")
    """Learn only from best images with at least this reward (f_clip_score: 0 = nothing
    flagged; oracle: 1 = right)."""

    RANGES: ClassVar[dict] = {"keep_fraction": Range(0, 1, lo_open=True)}


#: Weight of CLIPScore (0-2.5) added to the F-CLIPScore and oracle rewards: breaks ties (many
#: images have nothing flagged) far below one eps unit.
CLIP_TIE_BREAK = 1e-3


def card_eps(detector: str, pipeline: str | None = None) -> float | None:
    """The eps the card of the pipeline being trained calibrated for `detector`
    (`generation.cards.PipelineCard`: a shipped ShapesWorld name or a local folder; None =
    the shipped default pipeline), or None (no card, or none for that detector)."""
    from pathlib import Path

    from generation.cards import PipelineCard
    from shapesworld.pipelines import PIPELINE_NAME, pipeline_path

    name = pipeline or PIPELINE_NAME
    try:
        folder = pipeline_path(name)
    except FileNotFoundError:
        folder = Path(name).expanduser()
        if not folder.is_dir():
            return None  # a hub id: no card of ours
    card = PipelineCard.load(folder)
    return card.threshold_for(detector) if card is not None else None


def load_detector(detector: str, device, eps: float | None = None, pipeline: str | None = None):
    """The recipes' detector (`--detector`: any name `MisalignmentDetector.from_pretrained`
    accepts, or a folder) at threshold `eps` (`--eps`); without one, the eps the trained
    pipeline's card calibrated for this detector, else the detector's own card (or the
    paper's -5e-5)."""
    from feedback import MisalignmentDetector

    eps = eps if eps is not None else card_eps(detector, pipeline)
    return MisalignmentDetector.from_pretrained(
        detector, device=str(device), **({"threshold": eps} if eps is not None else {})
    )


def make_reward(
    detector: str, which: str, device, eps: float | None = None, pipeline: str | None = None
):
    """reward(images, prompts) -> (N,): F-CLIPScore / |eps| (+ a CLIPScore tie-break far
    below one eps unit), the region score ("regions": `RewardConfig(regions=True)`),
    CLIPScore, or the ShapesWorld oracle's verdict (1 when the image satisfies the whole
    prompt; + the same CLIPScore tie-break): what perfect feedback would select, the ceiling
    of selection-based recipes. `eps`, `pipeline`: as for `load_detector`."""
    from feedback import FeedbackReward, RewardConfig
    from shapesworld.pipelines import judge_tensor

    fr = FeedbackReward(
        load_detector(detector, device, eps, pipeline),
        RewardConfig(clip_score_weight=CLIP_TIE_BREAK, regions=which == "regions"),
    )

    def reward(images, prompts):
        rewards, info = fr(images, prompts)
        if which in ("f_clip_score", "regions"):
            return rewards
        clip = info.output.clip_score
        if which == "oracle":
            return oracle_verdicts(images, prompts).to(clip) + CLIP_TIE_BREAK * clip
        if which == "oracle_dense":  # the share of the prompt's judged words the image gets right
            share = []
            for im, p in zip(images, prompts):
                v = [w.correct for w in judge_tensor(im, p).words if w.correct is not None]
                share.append(sum(v) / len(v) if v else 0.0)
            return torch.tensor(share, dtype=clip.dtype, device=clip.device) + CLIP_TIE_BREAK * clip
        return clip

    return reward


def check_reward(cfg) -> None:
    """`cfg.reward` is known, and an oracle reward comes with ShapesWorld prompts."""
    if cfg.reward not in REWARDS:
        raise ValueError(f"--reward must be one of {REWARDS}, got {cfg.reward!r}")
    if cfg.reward.startswith("oracle") and cfg.prompts:
        raise ValueError(
            f"--reward {cfg.reward} is ShapesWorld's pixel oracle: it judges ShapesWorld "
            "prompts only; with --prompts use f_clip_score, regions or clip_score"
        )


def main(cfg: FilteredConfig) -> dict:
    check_reward(cfg)
    reward = None

    def collect(pipe, prompts, seeds) -> Collected:
        nonlocal reward
        reward = reward or make_reward(cfg.detector, cfg.reward, pipe.device, cfg.eps, cfg.pipeline)
        s = sample_round(
            pipe,
            prompts,
            cfg.images_per_prompt,
            seeds,
            reward,
            num_inference_steps=cfg.sample_steps,
            guidance_scale=cfg.guidance,
        )
        keep = s.filtered(cfg.images_per_prompt, cfg.keep_fraction, cfg.min_reward)
        return Collected(
            s.images[keep],
            [s.prompts[i] for i in keep],
            float(s.rewards.mean()),
            float(s.rewards[keep].mean()) if keep else None,
            len(s.prompts),
        )

    return run_shapes_rounds(cfg, collect, "reward-filtered")


def parse_args(argv=None, cls=FilteredConfig):
    """The recipe's config from the command line (`--help`: every field, `--config FILE`)."""
    return parse_config(cls, argv, description=__doc__)


if __name__ == "__main__":
    run_recipe(main, parse_args, threads=2)
