"""Numeric ranges of config fields, checked in `__post_init__` so a bad value (from a flag, a
config file or Python) is one line naming the field, never a run that "finishes" with
`rounds_done: -1`.

A config dataclass declares `RANGES: ClassVar[dict[str, Range]]`; `check_ranges(cfg)` merges
the declarations along the class's MRO (a subclass adds to and overrides its bases').
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Range:
    """lo <= value <= hi (an open end excludes the bound; None = unbounded); `integer`
    requires an int."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    integer: bool = False

    def describe(self) -> str:
        parts = []
        if self.lo is not None:
            parts.append(f"{'>' if self.lo_open else '>='} {self.lo:g}")
        if self.hi is not None:
            parts.append(f"{'<' if self.hi_open else '<='} {self.hi:g}")
        kind = "an integer" if self.integer else "a number"
        return f"{kind} " + " and ".join(parts) if parts else kind

    def ok(self, v) -> bool:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return False
        if self.integer and not isinstance(v, int):
            return False
        if isinstance(v, float) and math.isnan(v):
            return False
        if self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo):
            return False
        if self.hi is not None and (v >= self.hi if self.hi_open else v > self.hi):
            return False
        return True


COUNT = Range(lo=1, integer=True)
"""A count: 1 or more."""
NONNEG_INT = Range(lo=0, integer=True)
POSITIVE = Range(lo=0, lo_open=True)
NONNEG = Range(lo=0)
SHARE = Range(lo=0, hi=1)
"""A share or probability in [0, 1]."""


def check_ranges(cfg) -> None:
    """Raise `ValueError` naming the first field of `cfg` outside its declared range."""
    ranges: dict[str, Range] = {}
    for klass in reversed(type(cfg).__mro__):
        ranges.update(vars(klass).get("RANGES", {}))
    for name, rng in ranges.items():
        v = getattr(cfg, name)
        if v is None and getattr(type(cfg), name, ...) is None:
            continue  # an optional field left unset (resolved later)
        if not rng.ok(v):
            raise ValueError(
                f"{name} (--{name.replace('_', '-')}) must be {rng.describe()}, got {v!r}"
            )
