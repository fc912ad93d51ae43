"""Model-specific code behind one small interface (`Backend`)."""

from .base import (
    Backend,
    BlockView,
    attributed_text_forward,
    cosine,
    encode_text_fast,
    text_forward,
)
from .open_clip import OpenClipBackend
from .transformers import TransformersBackend

__all__ = [
    "Backend",
    "BlockView",
    "OpenClipBackend",
    "TransformersBackend",
    "attributed_text_forward",
    "cosine",
    "encode_text_fast",
    "text_forward",
]
