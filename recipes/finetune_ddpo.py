"""Policy-gradient LoRA fine-tuning (DDPO-style) with a CLIP4DM reward.

    accelerate launch --cpu --num_processes 1 recipes/finetune_ddpo.py \
        --output-dir runs/ddpo --rounds 8 [--reward clip_score] [--config run.yaml] [--resume]

On your own model and prompts (weight syntax in the file is stripped):

    accelerate launch recipes/finetune_ddpo.py --output-dir runs/mine-ddpo \
        --pipeline ./my-sd15 --prompts prompts.txt [--validation-prompts val.txt \
        --val-every 2] --detector ViT-B-32 [--eps -5e-5] --rounds 8

Each round every process samples `images_per_prompt` images of each of its training prompts
with a stochastic DDIM sampler (eta = `--eta`) that records every step's latent and
log-probability (`generation.finetune.sampler`), scores the images (`--reward f_clip_score`:
F-CLIPScore in units of the detector's eps with a CLIPScore tie-break; `clip_score`: the
twin), and normalizes the rewards into advantages within each prompt's group (DDPO's
per-prompt statistics). Each optimizer step then takes a minibatch of samples at one random
denoising step, recomputes that step's log-probability under the current LoRA, and minimizes
PPO's clipped objective  max(-A r, -A clip(r, 1 - c, 1 + c)),  r = exp(logp_new - logp_old).
Round loop, checkpoints, data parallelism and `--resume`: `generation.finetune.run_rounds`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from generation.finetune import Collected, RoundsResult
from generation.finetune.policy import PolicyConfig, group_advantages, policy_objective
from generation.finetune.ranges import POSITIVE
from generation.finetune.sampler import sample_with_logprob
from recipes.cli import parse_config, run_recipe
from recipes.wiring import RecipeConfig, check_reward, recipe_reward, run_recipe_rounds


@dataclass
class DDPOConfig(RecipeConfig):
    """DDPO-style fine-tuning (every field is a command-line flag)."""

    output_dir: str = "runs/ddpo"
    reward: str = "f_clip_score"
    """f_clip_score (CLIP4DM) or clip_score (the twin)."""
    eta: float = 1.0
    """DDIM stochasticity of the sampling policy (0 would make log-probs degenerate)."""
    clip_range: float = 1e-4
    """PPO ratio clip (DDPO's default: the per-step ratios are very close to 1)."""
    lr: float = 1e-4

    RANGES: ClassVar[dict] = {"eta": POSITIVE, "clip_range": POSITIVE}

    def policy(self) -> PolicyConfig:
        """The policy objective's settings (no KL anchor: plain DDPO)."""
        return PolicyConfig(
            sample_steps=self.sample_steps,
            guidance=self.guidance,
            eta=self.eta,
            clip_range=self.clip_range,
        )


def main(cfg: DDPOConfig, name: str = "ddpo") -> RoundsResult:
    check_reward(cfg)
    if cfg.eta <= 0:
        raise ValueError("--eta must be > 0: a deterministic sampler has no log-probabilities")
    state: dict = {}

    def collect(pipe, prompts, seeds) -> Collected:
        if "reward" not in state:
            state["reward"] = recipe_reward(cfg, cfg.reward, pipe.device)
        texts = [p for p in prompts for _ in range(cfg.images_per_prompt)]
        tr = sample_with_logprob(
            pipe,
            texts,
            seeds,
            num_inference_steps=cfg.sample_steps,
            guidance_scale=cfg.guidance,
            eta=cfg.eta,
        )
        rewards = state["reward"](tr.images, texts).float().cpu()
        # Per-prompt advantage normalization: each image against its prompt's other images.
        adv = group_advantages(rewards, cfg.images_per_prompt)
        return Collected(
            tr.images, texts, float(rewards.mean()), float(rewards.mean()), len(texts), (tr, adv)
        )

    policy = cfg.policy()

    def objective(pipe, got: Collected, gen: torch.Generator, _rounds_cfg):
        return policy_objective(pipe, got, gen, policy)

    # the policy objective learns from the samples alone: no anchor data
    return run_recipe_rounds(cfg, collect, name, anchors=False, objective=objective)


def parse_args(argv=None) -> DDPOConfig:
    """The recipe's config from the command line (`--help`: every field, `--config FILE`)."""
    return parse_config(DDPOConfig, argv, description=__doc__)


if __name__ == "__main__":
    run_recipe(main, parse_args, threads=2)
