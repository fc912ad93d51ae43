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
from .attend_and_excite import AttendAndExcite
from .base import (
    STRATEGIES,
    LoopState,
    RoundPlan,
    Strategy,
    StrategyOptions,
    get_strategy,
    register,
    strategy_options,
)
from .best_of_n import BestOfN
from .early_reject import EarlyReject
from .phrase_guidance import PhraseGuidance
from .preview import Preview
from .region_fix import RegionFix
from .resample import Resample
from .reweight import Reweight

__all__ = [
    "STRATEGIES",
    "AttendAndExcite",
    "BestOfN",
    "EarlyReject",
    "LoopState",
    "PhraseGuidance",
    "Preview",
    "RegionFix",
    "Resample",
    "Reweight",
    "RoundPlan",
    "Strategy",
    "StrategyOptions",
    "get_strategy",
    "register",
    "strategy_options",
]
