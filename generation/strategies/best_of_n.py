"""best_of_n: one round of the whole budget from new seeds; keep the best."""

from dataclasses import dataclass

from .base import Strategy, StrategyOptions, register


@dataclass
class BestOfN(StrategyOptions):
    """best_of_n has no settings of its own (the budget is `LoopConfig.max_images`)."""


@register
class BestOfNStrategy(Strategy):
    name = "best_of_n"
    options_class = BestOfN
    single_round = True
