"""reweight: raise the weights of the words the kept image gets wrong, regenerate (the rule:
`generation.weighting.raise_weights`)."""

from ..weighting import raise_weights
from .base import RoundPlan, Strategy, register


@register
class Reweight(Strategy):
    name = "reweight"
    requires = ("weights",)

    def next(self, state):
        cfg = self.config
        chosen = state.chosen
        prev = state.last.weights
        weights = raise_weights(
            prev,
            [w.score for w in chosen.words],
            [w.misaligned for w in chosen.words],
            threshold=state.threshold,
            step=cfg.weight_step,
            max_weight=cfg.max_weight,
        )
        return RoundPlan("reweight", weights=weights, reuse_seeds=not cfg.reseed)
