"""best_of_n: one round of the whole budget from new seeds; keep the best."""

from .base import Strategy, register


@register
class BestOfN(Strategy):
    name = "best_of_n"
    single_round = True
