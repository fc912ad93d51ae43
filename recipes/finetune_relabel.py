"""Word-level hindsight relabeling: learn from every generated image under the caption it
shows, found by replacing the words the detector flags (IPR-style), plus anchor data.

    accelerate launch --cpu --num_processes 1 recipes/finetune_relabel.py --output-dir runs/rl

On your own model and prompts (your candidate words per kind, your anchor pairs; weight
syntax in the prompt file is stripped):

    accelerate launch recipes/finetune_relabel.py --output-dir runs/mine-relabel \
        --pipeline ./my-sd15 --prompts prompts.txt --candidates candidates.json \
        --anchors ./my-pairs [--anchor-fraction 0.5] --detector ViT-B-32 [--eps -5e-5] \
        [--validation-prompts val.txt --val-every 2]

    candidates.json: {"color": ["red", "blue", "green"], "animal": ["dog", "cat", "horse"]}

Each round: generate `--images-per-prompt` images of each training prompt; for an image with
flagged words, try the other members of each flagged word's kind (on ShapesWorld: colors,
shapes, sizes, the opposite relation; else `--candidates FILE`) and attribute swaps between
the two objects, and keep the candidate the detector finds aligned with the highest
CLIPScore (an image with nothing flagged keeps its prompt; one with no aligned candidate is
dropped). Take denoising steps on
(image, relabeled caption) pairs with `--anchor-fraction` of rendered scenes and their exact
captions (or `--anchors DIR`, your own pairs) mixed in. So every pair is meant to be a
correct pair, and the words the model confuses get explicit examples.

`--relabel-by clip_score` is the scalar twin at equal compute (every replaceable word tried,
the highest-CLIPScore caption kept, the prompt included); `--relabel-by oracle` is the
ceiling (the pixel oracle's true caption of the image: perfect relabels).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from generation.finetune import Collected, RoundsResult, sample_round
from recipes.cli import parse_config, run_recipe
from recipes.wiring import RecipeConfig, recipe_detector, run_recipe_rounds
from shapesworld.vocabulary import COLORS, SHAPES, SIZES

RELABEL_BY = ("detector", "clip_score", "oracle")
#: ShapesWorld's interchangeable words per kind (a user gives their own lists).
CLASSES = {
    "color": list(COLORS),
    "shape": list(SHAPES),
    "size": list(SIZES),
    "horizontal": ["left", "right"],
    "vertical": ["above", "below"],
    "side": ["top", "bottom"],
}


@dataclass
class RelabelConfig(RecipeConfig):
    """Hindsight relabeling (every field is a command-line flag)."""

    output_dir: str = "runs/relabel"
    relabel_by: str = "detector"
    """detector (CLIP4DM: replace the flagged words), clip_score (the scalar twin: the
    highest-CLIPScore single replacement of any word) or oracle (the ceiling: the pixel
    oracle's true caption)."""
    anchor_fraction: float = 0.5
    candidates: str = ""
    """A JSON file {word kind: [interchangeable words]} (e.g. {"color": ["red", "blue"],
    "animal": ["dog", "cat"]}): the replacements tried for a flagged word. Empty =
    ShapesWorld's colors, shapes, sizes and relations (with ShapesWorld prompts only)."""

    def __post_init__(self):
        super().__post_init__()
        if self.relabel_by not in RELABEL_BY:
            raise ValueError(f"relabel_by must be one of {RELABEL_BY}, got {self.relabel_by!r}")
        if self.prompts and self.relabel_by == "oracle":
            raise ValueError(
                "--relabel-by oracle is ShapesWorld's pixel oracle: with --prompts use "
                "detector or clip_score"
            )
        if self.prompts and not self.candidates:
            raise ValueError(
                "with --prompts, --candidates FILE gives the words to relabel with (JSON "
                '{"kind": ["word", ...]}); ShapesWorld\'s go with ShapesWorld prompts only'
            )
        if self.candidates:
            from generation.finetune.relabel import read_candidates

            read_candidates(self.candidates)  # a bad file is one line up front


def candidate_classes(cfg: RelabelConfig) -> dict[str, list[str]]:
    """`--candidates` read (`generation.finetune.relabel.read_candidates`), else `CLASSES`."""
    from generation.finetune.relabel import read_candidates

    return read_candidates(cfg.candidates) if cfg.candidates else CLASSES


def main(cfg: RelabelConfig) -> RoundsResult:
    from generation.finetune.relabel import relabel
    from shapesworld.generated import label_generated

    classes = candidate_classes(cfg)
    state: dict = {}

    def collect(pipe, prompts, seeds) -> Collected:
        if "det" not in state:
            state["det"] = recipe_detector(cfg, pipe.device)
        det = state["det"]
        s = sample_round(
            pipe,
            prompts,
            cfg.images_per_prompt,
            seeds,
            lambda im, p: im.new_zeros(len(p)),  # no reward: every image is relabeled
            num_inference_steps=cfg.sample_steps,
            guidance_scale=cfg.guidance,
        )
        if cfg.relabel_by == "oracle":
            from generation.figures import to_pil

            rng = np.random.default_rng(seeds[0])
            caps = [
                label_generated(to_pil(im), p, rng).true_caption
                for im, p in zip(s.images, s.prompts)
            ]
        else:
            caps = relabel(det, s.images, s.prompts, classes, by=cfg.relabel_by)
        keep = [i for i, c in enumerate(caps) if c]
        changed = sum(caps[i] != s.prompts[i] for i in keep)
        return Collected(
            s.images[keep],
            [caps[i] for i in keep],
            len(keep) / max(len(caps), 1),  # share of images kept (with a caption)
            changed / max(len(keep), 1),  # share of kept images relabeled
            len(s.prompts),
        )

    return run_recipe_rounds(cfg, collect, "relabel")


def parse_args(argv=None) -> RelabelConfig:
    return parse_config(RelabelConfig, argv, description=__doc__)


if __name__ == "__main__":
    run_recipe(main, parse_args, threads=2)
