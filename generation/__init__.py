"""clip4dm generation: CLIP4DM feedback in the loop of a diffusers pipeline.

Entry point: `FeedbackPipeline(pipe, detector, LoopConfig(...), verifier=card)`, then call it
like the pipeline. Pipeline families through `generation.adapters` (SD 1.x/2.x, SDXL,
SD3/3.5, FLUX.1, PixArt-Σ, Sana, generic); strategies through `generation.strategies`
(best-of-N, resampling, re-weighting of misaligned words, per-phrase guidance, automatic
Attend-and-Excite); selection and the stop rule through `generation.verifier` (a
`feedback.Verifier` card fitted on the generator's labelled images); the user's own weight
syntax through `generation.parse_prompt`; the command line in `generation.cli`.
"""

from .adapters import ADAPTERS, PipelineAdapter, TextSlot, adapter_for
from .attend_excite import token_indices
from .config import RECOMMENDED_STRATEGY, LoopConfig
from .outputs import FeedbackPipelineOutput, PromptHistory, RoundEvent, RoundRecord
from .pipeline import FeedbackPipeline
from .prompt_syntax import ParsedPrompt, emit, parse_prompt
from .selection import best_index
from .strategies import (
    STRATEGIES,
    AttendAndExcite,
    BestOfN,
    EarlyReject,
    PhraseGuidance,
    Preview,
    RegionFix,
    Resample,
    Reweight,
    RoundPlan,
    Strategy,
    StrategyOptions,
    register,
)
from .weighting import raise_weights, to_a1111, to_compel

__all__ = [
    "AttendAndExcite",
    "BestOfN",
    "EarlyReject",
    "PhraseGuidance",
    "Preview",
    "RegionFix",
    "Resample",
    "Reweight",
    "StrategyOptions",
    "ADAPTERS",
    "PipelineAdapter",
    "RoundPlan",
    "Strategy",
    "TextSlot",
    "adapter_for",
    "register",
    "RECOMMENDED_STRATEGY",
    "STRATEGIES",
    "FeedbackPipeline",
    "FeedbackPipelineOutput",
    "LoopConfig",
    "PromptHistory",
    "RoundEvent",
    "RoundRecord",
    "ParsedPrompt",
    "emit",
    "parse_prompt",
    "best_index",
    "raise_weights",
    "to_a1111",
    "to_compel",
    "token_indices",
]
