"""clip4dm feedback: word-level misalignment between an image and its caption (CLIP4DM).

Entry point: `MisalignmentDetector.from_pretrained(model)`, then `detector(image, caption)`
(the whole image) or `detector.detect_regions(images, captions)` (which word, and where:
`feedback.regions`).
"""

from .alignment import WordTokens, align_words
from .attribution import eot_cam, relevance
from .backends import Backend, OpenClipBackend, TransformersBackend
from .config import DEFAULT_TEMPLATE, DetectorConfig
from .detector import DetectorOutput, MisalignmentDetector
from .errors import Clip4dmError, InputError, ModelLoadError, NonFiniteScoreError
from .formulas import clip_score, f_clip_score, select_misaligned, sum_negative_attribution
from .images import load_image, to_rgb
from .regions import RegionConfig, RegionReport, RegionWord, parse_structure
from .registry import DEFAULT_MODEL, load_backend, recommended_settings, shipped_models
from .report import MisalignmentReport, WordScore
from .rewards import FeedbackReward, RewardConfig, token_rewards
from .verifier import Verifier, fit_verifier
from .words import Word, split_words

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_TEMPLATE",
    "DetectorOutput",
    "FeedbackReward",
    "RewardConfig",
    "WordTokens",
    "align_words",
    "token_rewards",
    "Backend",
    "Clip4dmError",
    "DetectorConfig",
    "InputError",
    "MisalignmentDetector",
    "MisalignmentReport",
    "ModelLoadError",
    "RegionConfig",
    "RegionReport",
    "RegionWord",
    "NonFiniteScoreError",
    "OpenClipBackend",
    "TransformersBackend",
    "Word",
    "WordScore",
    "clip_score",
    "eot_cam",
    "f_clip_score",
    "load_backend",
    "load_image",
    "parse_structure",
    "recommended_settings",
    "relevance",
    "select_misaligned",
    "shipped_models",
    "split_words",
    "Verifier",
    "fit_verifier",
    "sum_negative_attribution",
    "to_rgb",
]
