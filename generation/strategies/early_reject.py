"""early_reject: search at equal compute inside one run. Candidates (the seeds a full run
would use) are sampled one at a time at full steps; after `reject_at` steps the denoiser's
estimate of the finished image (x0-hat, from the family's own scheduler,
`generation.clean_estimate`) is decoded and scored by the loop's rule, and a candidate that
is not the best seen so far is stopped there (the pipeline's `interrupt`), so its remaining
steps are saved. A secretary rule: the first candidates (the budget's candidate count / e) are
only looked at, after which a candidate runs to the end when its estimate ranks at least as
high as every one seen before it, and always when the budget left could not finish another.

Each candidate is one round: a stopped one is recorded as a preview (its x0-hat image, never
kept) that cost `reject_at` steps; a finished one is an ordinary image the stop rule judges.
Where the family cannot be read mid-run (no `callback_on_step_end`, no `interrupt`, a
scheduler without an x0 estimate, no VAE) or the schedule is too short to save anything, it
falls back to best-of-N at full steps and says so in the round's record.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from feedback.fields import positive_int

from ..clean_estimate import capture_clean
from ..selection import rank_key
from .base import RoundPlan, Strategy, StrategyOptions, register


@dataclass
class EarlyReject(StrategyOptions):
    """early_reject's settings.

    at: each candidate is read after this many steps (default: a fifth of the full steps, at
        least 2).
    """

    at: int | None = None

    def __post_init__(self):
        positive_int(self, "at", optional=True)


@register
class EarlyRejectStrategy(Strategy):
    name = "early_reject"
    rounds_by_steps = True
    budgets_steps = True
    options_class = EarlyReject

    def first(self, state):
        full = state.adapter.call_default("num_inference_steps", state.call_kw, None)
        budget = state.step_budget
        why = None
        if not full or not budget:
            why = "the pipeline states no step count"
        else:
            self.at = self.options.at or max(2, round(full / 5))
            why = state.adapter.early_stop_missing()
            if why is None and 2 * self.at > full:
                why = f"a check after {self.at} of {full} steps saves too little"
        if why is not None:
            n = max(1, (budget or full or 1) // (full or 1))
            return RoundPlan("plain", n=n, extra={"early_reject": f"{why}: best-of-{n}"})
        self.full = full
        # candidates the budget pays for if all but one are stopped: the look-only phase
        # is that count over e (the secretary rule)
        self.explore = max(1, math.floor((budget - full) / self.at / math.e))
        self.seen: list = []  # ranking keys of every candidate's x0-hat at the check step
        self.next_seed = None
        return self._candidate(state)

    def _candidate(self, state):
        plan = RoundPlan("candidate", n=1, extra={"reject_at": self.at})
        plan.generate = lambda st, gens: self._run(st, plan, gens)
        return plan

    def next(self, state):
        last = state.last
        if "reject_at" not in last.extra:
            return None  # fell back to best-of-N
        if state.used_steps + self.full > state.step_budget:
            return None  # another candidate could not finish
        plan = self._candidate(state)
        plan.seeds = [max(r.seeds[-1] for r in state.rounds) + 1]
        return plan

    def _run(self, state, plan, gens):
        adapter, pipe = state.adapter, state.adapter.pipe
        x0: dict = {}
        user_cb = state.call_kw.get("callback_on_step_end")
        # after this candidate's check, could the budget still finish another one?
        may_reject = state.used_steps + self.at + self.full <= state.step_budget
        verdict: dict = {}

        def on_step_end(p, i, t, kwargs):
            out = user_cb(p, i, t, kwargs) if user_cb is not None else kwargs
            if i == self.at - 1 and x0.get("x0") is not None:
                image = adapter.decode_latents(x0["x0"], state.call_kw)
                report = state.score(image)[0]
                key = rank_key(report)
                best_before = max(self.seen) if self.seen else None
                self.seen.append(key)
                looking = len(self.seen) <= self.explore
                worse = best_before is not None and key < best_before
                if may_reject and (looking or worse):
                    verdict.update(image=image, report=report)
                    p._interrupt = True
            return out

        kw = {**state.call_kw, "callback_on_step_end": on_step_end}
        inputs = adapter.call_inputs(state.prompt, state.words, state.base_weights, state.call_kw)
        with capture_clean(pipe.scheduler, x0):
            images = adapter.generate(
                inputs,
                generators=gens,
                negative_prompt=state.negative_prompt,
                call_kw=kw,
            )
        if verdict:
            plan.preview, plan.fix = True, "rejected"
            plan.spent_steps = self.at
            plan.reports = [verdict["report"]]
            plan.extra["stopped_at"] = self.at
            return verdict["image"]
        plan.extra["finished"] = True
        return images
