"""One way to validate a config dataclass's fields: each check names the class and the field
and shows the value it got (`LoopConfig.max_images must be a positive integer, got 0`).

Every config of the library (`DetectorConfig`, `RegionConfig`, `LoopConfig`, the strategies'
own settings) validates in its `__post_init__` with these.
"""

from __future__ import annotations

from collections.abc import Iterable
from numbers import Real

from .errors import InputError


class ConfigError(InputError):
    """A config field holds a value it cannot take (a `ValueError`; the CLI prints it as one
    line)."""


def fail(obj, field: str, what: str) -> None:
    """Raise `ConfigError` for `obj.field`: it must be `what`."""
    raise ConfigError(f"{type(obj).__name__}.{field} must be {what}, got {getattr(obj, field)!r}")


def positive_int(obj, *fields: str, optional: bool = False) -> None:
    """Each field is an int >= 1 (or None with `optional`)."""
    for f in fields:
        v = getattr(obj, f)
        if optional and v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            fail(obj, f, "a positive integer" + (" or None" if optional else ""))


def number_in(
    obj, field: str, lo: float | None = None, hi: float | None = None, *, open_lo: bool = False
) -> None:
    """The field is a real number in [lo, hi] ((lo, hi] with `open_lo`); None bounds are open."""
    v = getattr(obj, field)
    ok = isinstance(v, Real) and not isinstance(v, bool) and v == v
    if ok and lo is not None:
        ok = v > lo if open_lo else v >= lo
    if ok and hi is not None:
        ok = v <= hi
    if not ok:
        lo_s = "-inf" if lo is None else f"{lo:g}"
        hi_s = "inf" if hi is None else f"{hi:g}"
        fail(obj, field, f"a number in {'(' if open_lo or lo is None else '['}{lo_s}, {hi_s}]")


def one_of(obj, field: str, choices: Iterable) -> None:
    """The field is one of `choices`."""
    choices = tuple(choices)
    if getattr(obj, field) not in choices:
        fail(obj, field, f"one of {choices}")
