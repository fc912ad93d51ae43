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

from generation.finetune import Collected, RoundsResult, sample_round
from generation.finetune.ranges import Range
from recipes.cli import parse_config, run_recipe
from recipes.wiring import RecipeConfig, check_reward, recipe_reward, run_recipe_rounds


@dataclass
class FilteredConfig(RecipeConfig):
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


def main(cfg: FilteredConfig) -> RoundsResult:
    check_reward(cfg)
    reward = None

    def collect(pipe, prompts, seeds) -> Collected:
        nonlocal reward
        reward = reward or recipe_reward(cfg, cfg.reward, pipe.device)
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

    return run_recipe_rounds(cfg, collect, "reward-filtered")


def parse_args(argv=None) -> FilteredConfig:
    """The recipe's config from the command line (`--help`: every field, `--config FILE`)."""
    return parse_config(FilteredConfig, argv, description=__doc__)


if __name__ == "__main__":
    run_recipe(main, parse_args, threads=2)
