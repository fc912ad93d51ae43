"""Loop strategies, one module each, registered by name (`STRATEGIES`).

Adding one: a new module here with a `@register`ed `Strategy` subclass, and its import below.
"""

from . import (  # noqa: F401
    attend_and_excite,
    best_of_n,
    early_reject,
    phrase_guidance,
    preview,
    region_fix,
    resample,
    reweight,
)
from .base import STRATEGIES, LoopState, RoundPlan, Strategy, get_strategy, register

__all__ = ["STRATEGIES", "LoopState", "RoundPlan", "Strategy", "get_strategy", "register"]
