"""The control every denoising recipe must beat: continued training on anchor data alone.

    accelerate launch --cpu --num_processes 1 recipes/finetune_anchors_only.py \
        --output-dir runs/anchors-only [--anchors-per-round 48] [--anchors DIR]

On your own model (your anchor pairs are required with your prompts, which only validation
uses here):

    accelerate launch recipes/finetune_anchors_only.py --output-dir runs/mine-anchors \
        --pipeline ./my-sd15 --anchors ./my-pairs [--prompts prompts.txt \
        --validation-prompts val.txt --val-every 2 --detector ViT-B-32 --eps -5e-5]

Each round takes `--anchors-per-round` real image-caption pairs (on ShapesWorld freshly
rendered scenes with their exact captions, the base's own training distribution; or
`--anchors DIR`: a metadata.jsonl with file_name and text, and/or a .txt caption beside each
image) and the same optimizer steps as the other recipes, and generates nothing: no
sample, no reward, no feedback. A recipe that learns from its own samples only helps if it
ends above this row at equal optimizer steps; otherwise its gain is just more training.
Round loop, validation (`--val-every`), checkpoints and `--resume`: `generation.finetune.
run_rounds` through `recipes.wiring`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from generation.finetune import Collected, RoundsResult
from generation.finetune.anchors import folder_anchors
from generation.finetune.ranges import COUNT
from recipes.cli import parse_config, run_recipe
from recipes.wiring import RecipeConfig, run_recipe_rounds
from shapesworld.data import anchor_source


@dataclass
class AnchorsOnlyConfig(RecipeConfig):
    """Anchor data alone (every field is a command-line flag)."""

    output_dir: str = "runs/anchors-only"
    anchors_per_round: int = 48
    """Anchor pairs a round learns from (the oracle ceiling's rounds hold ~44 items: ~22 right
    images and as many anchors)."""

    RANGES: ClassVar[dict] = {"anchors_per_round": COUNT}


def main(cfg: AnchorsOnlyConfig) -> RoundsResult:
    folder, flag = cfg.anchor_folder
    if not folder and cfg.prompts:
        raise ValueError(
            "with --prompts (your model) the anchors-only control needs --anchors DIR "
            "(your image-caption pairs); ShapesWorld's renders go with ShapesWorld only"
        )
    state: dict = {}

    def collect(pipe, prompts, seeds) -> Collected:
        if "anchors" not in state:
            px = pipe.unet.config.sample_size * pipe.vae_scale_factor
            state["anchors"] = (
                folder_anchors(folder, (px, px), flag) if folder else (anchor_source(resolution=px))
            )
        # seeded by the round's own seeds: a resumed run draws the same anchors
        images, captions = state["anchors"](cfg.anchors_per_round, np.random.default_rng(seeds))
        return Collected(images, captions, 0.0, 0.0, 0)

    # anchor_fraction stays 0: every example is already an anchor
    return run_recipe_rounds(cfg, collect, "anchors-only", anchors=False)


def parse_args(argv=None) -> AnchorsOnlyConfig:
    return parse_config(AnchorsOnlyConfig, argv, description=__doc__)


if __name__ == "__main__":
    run_recipe(main, parse_args, threads=2)
