"""`DetectorConfig`: how words are scored and selected (saved and loaded as JSON)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from .errors import InputError
from .fields import fail, number_in, one_of, positive_int
from .formulas import MODES

METHODS = ("gradient", "occlusion")
#: The paper's caption prefix.
DEFAULT_TEMPLATE = "A photo depicts "


@dataclass
class DetectorConfig:
    """How words are scored and selected.

    layers: number of last text layers whose signed CAMs are averaged (K; paper: 3).
    threshold: eps; in threshold mode words scoring below it are misaligned (paper: -5e-5).
    template: prefix put before every caption (paper: "A photo depicts "); its words are
        never reported.
    mode: "threshold" (every word below eps) or "most-negative" (the single lowest word).
    method: "gradient" (CLIP4DM) or "occlusion" (leave-one-word-out drop in cosine; costs one
        extra text forward per word, no backward).
    batch_size: pairs per forward/backward in `detect`.
    ablation_relu: clamp G*A at 0 (Chefer et al.). Not CLIP4DM; for comparisons only.
    """

    layers: int = 3
    threshold: float = -5e-5
    template: str = DEFAULT_TEMPLATE
    mode: str = "threshold"
    method: str = "gradient"
    batch_size: int = 32
    ablation_relu: bool = False

    def __post_init__(self):
        positive_int(self, "layers", "batch_size")
        one_of(self, "mode", MODES)
        one_of(self, "method", METHODS)
        number_in(self, "threshold")
        if self.threshold > 0:
            fail(self, "threshold", "<= 0 (a positive eps would flag words the image supports)")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> DetectorConfig:
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise InputError(f"unknown DetectorConfig field(s): {', '.join(sorted(unknown))}")
        return cls(**d)

    def save(self, path: str | os.PathLike) -> None:
        """Write the config as JSON (peft/trl style)."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> DetectorConfig:
        p = Path(path)
        if not p.is_file():
            raise InputError(f"detector config not found: {p}")
        try:
            return cls.from_dict(json.loads(p.read_text()))
        except json.JSONDecodeError as e:
            raise InputError(f"{p} is not JSON ({e.msg})") from None


__all__ = ["DEFAULT_TEMPLATE", "METHODS", "DetectorConfig"]
