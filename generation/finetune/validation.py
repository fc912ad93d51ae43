"""Model selection without peeking: score the model on a validation prompt split every few
rounds and keep the best round (`RoundsConfig.val_every`); the test prompts are judged once,
at the end, on what this kept."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .rounds import sample_round

Validator = Callable[[object], float]
"""validate(pipe) -> a score of the pipeline as it is now (higher is better)."""


def reward_validator(
    prompts: Sequence[str],
    reward: Callable[[torch.Tensor, list[str]], torch.Tensor],
    *,
    seed: int = 0,
    num_inference_steps: int = 20,
    guidance_scale: float = 4.0,
    batch_size: int = 32,
) -> Validator:
    """A validator: one image per validation prompt (prompt k seeded `seed + k`, the same
    noise every time it runs, so rounds differ only by the weights) scored by
    `reward(images (N, 3, H, W) in [0, 1], prompts) -> (N,)`; the score is the mean reward.

    With a 0/1 verdict as the reward (a labelled validation set, or ShapesWorld's oracle) the
    score is the share of validation prompts satisfied."""
    prompts = list(prompts)
    if not prompts:
        raise ValueError("validation needs at least one prompt")

    def validate(pipe) -> float:
        s = sample_round(
            pipe,
            prompts,
            1,
            [seed + k for k in range(len(prompts))],
            reward,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            batch_size=batch_size,
        )
        return float(s.rewards.mean())

    return validate
