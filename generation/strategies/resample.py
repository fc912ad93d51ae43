"""resample: new seeds, same prompt, until the detector finds nothing wrong or the budget is
spent (best-of-N that stops early: the control for every fix)."""

from dataclasses import dataclass

from .base import RoundPlan, Strategy, StrategyOptions, register


@dataclass
class Resample(StrategyOptions):
    """resample has no settings of its own (budget and stop rule are `LoopConfig`'s)."""


@register
class ResampleStrategy(Strategy):
    name = "resample"
    options_class = Resample

    def next(self, state):
        return RoundPlan("resample")
