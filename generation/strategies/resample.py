"""resample: new seeds, same prompt, until the detector finds nothing wrong or the budget is
spent (best-of-N that stops early: the control for every fix)."""

from .base import RoundPlan, Strategy, register


@register
class Resample(Strategy):
    name = "resample"

    def next(self, state):
        return RoundPlan("resample")
