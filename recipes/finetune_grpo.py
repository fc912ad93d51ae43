"""KL-anchored online fine-tuning (Flow-GRPO/DDPO-style with a reference policy).

    accelerate launch --cpu --num_processes 1 recipes/finetune_grpo.py --output-dir runs/grpo \
        [--reward f_clip_score|regions|clip_score|oracle|oracle_dense] [--kl 0.1]

On your own model and prompts (the oracle rewards are ShapesWorld's; weight syntax in the
file is stripped):

    accelerate launch recipes/finetune_grpo.py --output-dir runs/mine-grpo \
        --pipeline ./my-sd15 --prompts prompts.txt [--validation-prompts val.txt \
        --val-every 2] --detector ViT-B-32 [--eps -5e-5] --reward f_clip_score --kl 0.1

Per training prompt a group of `--images-per-prompt` images from a stochastic DDIM sampler that
records every step's log-probability; rewards normalized within each prompt's group
(group-relative advantages); each optimizer step minimizes PPO's clipped ratio on one
recorded step of a minibatch **plus `--kl` times the KL of that step's Gaussian under the
current LoRA to the frozen base's** (the adapters switched off, same latent), which the
Flow-GRPO authors say must not be 0: it holds the model near the base while it climbs the
reward. Rewards: `f_clip_score` (CLIP4DM), `regions` (the region score, `feedback.regions`),
`clip_score` (the twin), `oracle` (the ceiling:
the pixel oracle's verdict) and `oracle_dense` (the share of the prompt's words right). The
round's mean KL is logged (`kl`). LoRA only (`--rank`); shared pieces:
`generation.finetune.policy`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

from generation.finetune import PolicyConfig, RoundsResult
from generation.finetune.ranges import NONNEG
from recipes.cli import parse_config, run_recipe
from recipes.finetune_ddpo import DDPOConfig
from recipes.finetune_ddpo import main as ddpo_main


@dataclass
class GRPOConfig(DDPOConfig):
    """KL-anchored online fine-tuning (every field is a command-line flag)."""

    output_dir: str = "runs/grpo"
    kl: float = 0.1
    """Weight of the per-step KL to the frozen base policy (0 is DDPO)."""

    RANGES: ClassVar[dict] = {"kl": NONNEG}

    def policy(self) -> PolicyConfig:
        """DDPO's settings with the KL anchor `kl`."""
        return replace(super().policy(), kl=self.kl)


def main(cfg: GRPOConfig) -> RoundsResult:
    return ddpo_main(cfg, name="grpo")


def parse_args(argv=None) -> GRPOConfig:
    """The recipe's config from the command line (`--help`: every field, `--config FILE`)."""
    return parse_config(GRPOConfig, argv, description=__doc__)


if __name__ == "__main__":
    run_recipe(main, parse_args, threads=2)
