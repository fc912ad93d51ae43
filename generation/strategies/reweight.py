"""reweight: raise the weights of the words the kept image gets wrong, regenerate (the rule:
`generation.weighting.raise_weights`)."""

from dataclasses import dataclass

from feedback.fields import number_in

from ..weighting import raise_weights
from .base import RoundPlan, Strategy, StrategyOptions, register


@dataclass
class Reweight(StrategyOptions):
    """reweight's settings.

    step: a flagged word's weight grows by `step * min(score / threshold, 2)` each round it is
        flagged (a word far below the threshold is raised faster, up to twice the step), ...
    max_weight: ... and never beyond this (weights start at 1 and only grow).
    """

    step: float = 0.25
    max_weight: float = 2.0

    def __post_init__(self):
        number_in(self, "step", 0, None, open_lo=True)
        number_in(self, "max_weight", 1.0, 10.0)


@register
class ReweightStrategy(Strategy):
    name = "reweight"
    requires = ("weights",)
    options_class = Reweight

    def next(self, state):
        cfg, opt = self.config, self.options
        chosen = state.chosen
        prev = state.last.weights
        weights = raise_weights(
            prev,
            [w.score for w in chosen.words],
            [w.misaligned for w in chosen.words],
            threshold=state.threshold,
            step=opt.step,
            max_weight=opt.max_weight,
        )
        return RoundPlan("reweight", weights=weights, reuse_seeds=not cfg.reseed)
