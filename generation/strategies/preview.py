"""preview: search at equal compute. Many candidates sampled in a few steps (the seeds a full
run would use, the family's own scheduler), ranked by the loop's selection rule (the region
score for prompts of two or more objects), and only the best `preview_keep` finished at full
steps; the best finished image is kept.

The budget is `LoopConfig.max_steps` (denoiser steps per prompt), by default the compute of
best-of-`max_images` at full steps. With S full steps, k kept and p preview steps, the previews
are as many as (budget - k S) / p. Where previews cannot pay (p >= S / 2, as for a distilled
few-step schedule, or a budget under k full images) it falls back to best-of-N at full steps
and says so in the round's record.
"""

from __future__ import annotations

from dataclasses import dataclass

from feedback.fields import positive_int

from ..selection import rank_key
from .base import RoundPlan, Strategy, StrategyOptions, register


@dataclass
class Preview(StrategyOptions):
    """preview's settings.

    steps: preview steps per candidate (default: a fifth of the full steps, at least 2).
    keep: candidates finished at full steps.
    """

    steps: int | None = None
    keep: int = 2

    def __post_init__(self):
        positive_int(self, "steps", optional=True)
        positive_int(self, "keep")


def preview_plan(full_steps: int, budget: int, keep: int, preview_steps: int | None):
    """(number of previews, preview steps, kept) for a step budget, or None when previews
    cannot pay (few full steps, or a budget under `keep` full images)."""
    p = preview_steps or max(2, round(full_steps / 5))
    if 2 * p > full_steps or budget < keep * full_steps + 2 * p:
        return None
    n = (budget - keep * full_steps) // p
    return (n, p, keep) if n > keep else None


@register
class PreviewStrategy(Strategy):
    name = "preview"
    budgets_steps = True
    options_class = Preview

    def first(self, state):
        full = state.adapter.call_default("num_inference_steps", state.call_kw, None)
        if not full:
            return RoundPlan("plain", extra={"preview": "the pipeline states no step count"})
        budget = state.step_budget
        plan = preview_plan(full, budget, self.options.keep, self.options.steps)
        if plan is None:
            n = max(1, budget // full)
            return RoundPlan(
                "plain",
                n=n,
                extra={"preview": f"previews cannot pay at {full} steps: best-of-{n}"},
            )
        n, p, k = plan
        self._keep = k
        return RoundPlan(
            "preview",
            n=n,
            call_kw={"num_inference_steps": p},
            preview=True,
            extra={"preview_steps": p, "full_steps": full, "keep": k, "budget_steps": budget},
        )

    def next(self, state):
        last = state.last
        if not last.preview:
            return None  # finished (or fell back): the step budget decides what comes next
        order = sorted(
            range(len(last.reports)), key=lambda i: (rank_key(last.reports[i]), -i), reverse=True
        )
        top = order[: self._keep]
        return RoundPlan(
            "finish",
            seeds=[last.seeds[i] for i in top],
            n=len(top),
            extra={"from_previews": top},
        )
