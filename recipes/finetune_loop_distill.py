"""Token-level reward fine-tuning by distilling the feedback loop into a LoRA.

    accelerate launch --cpu --num_processes 1 recipes/finetune_loop_distill.py \
        --output-dir runs/loop-distill --rounds 8 [--strategy reweight] \
        [--config run.yaml] [--resume]

On your own model and prompts (the loop reads the file's weight syntax; captions are trained
without it):

    accelerate launch recipes/finetune_loop_distill.py --output-dir runs/mine-distill \
        --pipeline ./my-sd15 --prompts prompts.txt [--validation-prompts val.txt \
        --val-every 2] --detector ViT-B-32 [--eps -5e-5] \
        [--anchors ./my-pairs --anchor-fraction 0.3] --rounds 8

Design. A scalar reward says *how good* an image is; CLIP4DM's word scores say *which words*
the image got wrong. The feedback loop (`generation.FeedbackPipeline`) already turns those
words into a fix: it raises the weights of the flagged words' tokens (or gives their object
phrase its own guidance) and regenerates until the detector finds nothing misaligned. This
recipe trains the LoRA so that the *plain* prompt yields what the fixed prompt yielded: each
round runs the loop on every training prompt (at most `images_per_prompt` images, the same
compute as best-of-N), and when the loop ends with an image the detector finds aligned, that
image becomes a training target for the plain prompt's embedding. The update therefore
concentrates on exactly the words the base model neglects (the ones the loop had to raise),
which no scalar reward can point at. Its scalar twin at equal compute is
`recipes/finetune_reward_filtered.py --reward clip_score` (best of the same number of plain
samples by CLIPScore).

The round loop, checkpoints, data parallelism and `--resume` are `generation.finetune.run_rounds`
(see `recipes/finetune_reward_filtered.py`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from generation.finetune import CLIP_TIE_BREAK, Collected, RoundsResult
from recipes.cli import parse_config, run_recipe
from recipes.wiring import RecipeConfig, recipe_detector, run_recipe_rounds


@dataclass
class DistillConfig(RecipeConfig):
    """Loop distillation (every field is a command-line flag)."""

    output_dir: str = "runs/loop-distill"
    strategy: str = "reweight"
    """The loop's fix: reweight, phrase_guidance or resample (the control: no word-level fix)."""
    keep: str = "aligned"
    """aligned: learn only from loop results the detector finds aligned; best: always learn
    from the loop's kept image."""


def main(cfg: DistillConfig) -> RoundsResult:
    from feedback import FeedbackReward, RewardConfig
    from generation import FeedbackPipeline, LoopConfig
    from generation.finetune.prompts import clean

    if cfg.keep not in ("aligned", "best"):
        raise ValueError(f"--keep must be aligned or best, got {cfg.keep!r}")
    state: dict = {}

    def collect(pipe, prompts, seeds) -> Collected:
        if "fb" not in state:
            det = recipe_detector(cfg, pipe.device)
            loop = LoopConfig(
                strategy=cfg.strategy,
                max_images=cfg.images_per_prompt,
                max_rounds=cfg.images_per_prompt,
            )
            state["fb"] = FeedbackPipeline(pipe, det, loop)
            state["fr"] = FeedbackReward(det, RewardConfig(clip_score_weight=CLIP_TIE_BREAK))
        fb, fr = state["fb"], state["fr"]

        def reward(rep) -> float:
            # the f_clip_score reward (`generation.finetune.make_reward`) from the loop's own
            # reports: no second scoring of the images.
            return fr.image_reward(rep.f_clip_score, rep.clip_score)

        images, kept, all_rewards, kept_rewards, made = [], [], [], [], 0
        for i, prompt in enumerate(prompts):
            fb.config.seed = seeds[i * cfg.images_per_prompt]
            h = fb(
                prompt,
                num_inference_steps=cfg.sample_steps,
                guidance_scale=cfg.guidance,
                output_type="pt",
            ).history[0]
            made += h.num_images
            all_rewards += [reward(rep) for rec in h.rounds for rep in rec.reports]
            r, k = h.best
            if cfg.keep == "best" or not h.best_report.misaligned_words:
                images.append(h.rounds[r].images[k])
                # the plain prompt (weight syntax removed): the fix is what the LoRA learns
                kept.append(clean(prompt))
                kept_rewards.append(reward(h.best_report))
        return Collected(
            torch.stack(images) if images else torch.zeros(0, 3, 1, 1),
            kept,
            float(sum(all_rewards) / max(len(all_rewards), 1)),
            float(sum(kept_rewards) / max(len(kept_rewards), 1)),
            made,
        )

    # the loop reads the prompts' weight syntax (FeedbackPipeline parses it)
    return run_recipe_rounds(cfg, collect, "loop-distill", keep_syntax=True)


def parse_args(argv=None) -> DistillConfig:
    """The recipe's config from the command line (`--help`: every field, `--config FILE`)."""
    return parse_config(DistillConfig, argv, description=__doc__)


if __name__ == "__main__":
    run_recipe(main, parse_args, threads=2)
