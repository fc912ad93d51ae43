"""clip4dm generation: CLIP4DM feedback in the loop of a diffusers pipeline.

Entry point: `FeedbackPipeline(pipe, detector, LoopConfig(...))`, then call it like the
pipeline. Strategies: best-of-N by F-CLIPScore, resampling until aligned, re-weighting of
misaligned words, per-phrase guidance, automatic Attend-and-Excite.
"""

from .attend_excite import token_indices
from .config import RECOMMENDED_STRATEGY, STRATEGIES, LoopConfig
from .outputs import FeedbackPipelineOutput, PromptHistory, RoundEvent, RoundRecord
from .pipeline import FeedbackPipeline
from .selection import best_index
from .weighting import apply_weights, raise_weights, to_a1111, to_compel, token_weights

__all__ = [
    "RECOMMENDED_STRATEGY",
    "STRATEGIES",
    "FeedbackPipeline",
    "FeedbackPipelineOutput",
    "LoopConfig",
    "PromptHistory",
    "RoundEvent",
    "RoundRecord",
    "apply_weights",
    "best_index",
    "raise_weights",
    "to_a1111",
    "to_compel",
    "token_indices",
    "token_weights",
]
