"""Which word, and where: each object phrase scored on its own region (`score_regions`).

Entry point: `MisalignmentDetector.detect_regions(images, captions)` (and `score_regions` for
tensors in loops), returning `RegionReport`s.
"""

from .geometry import (
    Box,
    absolute_margin,
    centre,
    holds,
    overlap,
    partitions,
    relative_margin,
    sliding_windows,
)
from .isolate import ISOLATIONS, background_colour, box_masks, isolate
from .report import REASONS, PhraseResult, RegionReport, RegionWord, RelationResult
from .scoring import PROPOSALS, RegionConfig, assign, combined_score, score_regions
from .structure import (
    RELATIONS,
    Phrase,
    PromptStructure,
    Relation,
    parse_structure,
    split_phrases,
    word_phrases,
)

__all__ = [
    "Box",
    "ISOLATIONS",
    "PROPOSALS",
    "RELATIONS",
    "REASONS",
    "Phrase",
    "PhraseResult",
    "PromptStructure",
    "RegionConfig",
    "RegionReport",
    "RegionWord",
    "Relation",
    "RelationResult",
    "absolute_margin",
    "assign",
    "background_colour",
    "box_masks",
    "centre",
    "combined_score",
    "holds",
    "isolate",
    "overlap",
    "parse_structure",
    "partitions",
    "relative_margin",
    "score_regions",
    "sliding_windows",
    "split_phrases",
    "word_phrases",
]
