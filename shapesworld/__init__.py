"""ShapesWorld: an offline text-image testbed with exact captions, foils and a pixel oracle."""

from .captions import Caption, CaptionWord, describe, parse_caption
from .foils import HELD_OUT_SEED, Foil, FoilExample, foil_set, make_foil, swap_objects
from .oracle import DetectedObject, OracleJudgement, WordVerdict, detect_objects, judge
from .render import Degradation, render_scene
from .scenes import Scene, ShapeObject, sample_scene
from .vocabulary import COLORS, KINDS, SHAPES, SIZES, WORD_KINDS

__all__ = [
    "COLORS",
    "KINDS",
    "SHAPES",
    "SIZES",
    "WORD_KINDS",
    "HELD_OUT_SEED",
    "Caption",
    "CaptionWord",
    "Degradation",
    "DetectedObject",
    "Foil",
    "FoilExample",
    "OracleJudgement",
    "Scene",
    "ShapeObject",
    "WordVerdict",
    "describe",
    "detect_objects",
    "foil_set",
    "judge",
    "make_foil",
    "parse_caption",
    "render_scene",
    "sample_scene",
    "swap_objects",
]
