"""What each loop fix bought over a fresh sample on one generator, kept in its verifier card.

A fix (reweight, phrase guidance, region fix, ...) is worth a round only where it beat a fresh
sample. Measured from paired trials (`fit_fix_gains`: from the same wrong-looking kept image,
one image made by the fix and one fresh sample, both judged), by the kind of word flagged
("relation": a word outside every object phrase, such as "left", or a placement judged by
regions; "object": a word inside one; "missing": a word of an object found nowhere,
`feedback.regions`), and stored in the card's JSON under `fix_gains` (`feedback.Verifier`
keeps it among its `extras`): `{fix: {kind: {"gain", "ci", "n"}}}`. The loop applies a fix only
where its measured gain is above 0 (`fix_pays`, `generation.verifier.gate`); a fix the card
never measured is applied as asked.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from feedback import Verifier
from feedback.errors import InputError

#: the card's key
KEY = "fix_gains"


def fix_gains(verifier: Verifier | None) -> dict:
    """The card's measured fix gains (`{}` without a card or a measurement)."""
    return dict(verifier.extras.get(KEY) or {}) if verifier is not None else {}


def set_fix_gains(verifier: Verifier, gains: dict) -> None:
    """Store `gains` (`fit_fix_gains`' output) in the card (saved with `Verifier.save`)."""
    verifier.extras[KEY] = dict(gains)


def fix_pays(verifier: Verifier | None, fix: str, kind: str) -> bool | None:
    """Whether `fix` beat a fresh sample on the calibration prompts when the kept image's
    worst flagged word was of `kind`: its measured gain (share of right images, fix minus
    fresh) is above 0. None: the card has no such measurement."""
    cell = fix_gains(verifier).get(fix, {}).get(kind)
    if not cell or not cell.get("n"):
        return None
    return float(cell["gain"]) > 0


#: The kinds of flagged word a fix's gain is measured by (`fix_gains`).
FIX_KINDS = ("relation", "object", "missing")


def fit_fix_gains(rows: Sequence[dict], *, n_boot: int = 2000, seed: int = 0) -> dict:
    """What each fix bought over a fresh sample, from paired trials.

    rows: one per trial, `{"fix", "kind", "fixed_right", "fresh_right"}`: from the same
        wrong-looking kept image, one image made by the fix and one fresh sample (same seed),
        both judged right or wrong; `kind` is the kind of the kept image's worst flagged
        word (`FIX_KINDS`).
    Returns `{fix: {kind: {"gain", "ci", "n"}}}`: gain = share of fixed images right minus
    share of fresh ones right (paired; -1..1), ci its 95% bootstrap interval."""
    import numpy as np

    cells: dict[tuple[str, str], list[tuple[bool, bool]]] = {}
    for i, r in enumerate(rows):
        try:
            fix, kind = str(r["fix"]), str(r["kind"])
            pair = (bool(r["fixed_right"]), bool(r["fresh_right"]))
        except (KeyError, TypeError):
            raise InputError(
                f"fix trial {i} needs fix, kind, fixed_right and fresh_right, got {r!r}"
            ) from None
        if kind not in FIX_KINDS:
            raise InputError(f"fix trial {i}: kind must be one of {FIX_KINDS}, got {kind!r}")
        cells.setdefault((fix, kind), []).append(pair)
    rng = np.random.default_rng(seed)
    out: dict = {}
    for (fix, kind), pairs in sorted(cells.items()):
        d = np.array([a for a, _ in pairs], float) - np.array([b for _, b in pairs], float)
        boots = d[rng.integers(0, len(d), size=(n_boot, len(d)))].mean(1)
        out.setdefault(fix, {})[kind] = {
            "gain": float(d.mean()),
            "ci": [float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))],
            "n": len(d),
        }
    return out


def read_fix_trials(path: str | Path) -> list[dict]:
    """The fix trials of a JSONL file (`{"fix", "kind", "fixed_right", "fresh_right"}` per
    line; a line whose `fix` is null, a trial where nothing was flagged, is skipped)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"--fixes: file not found: {p}")
    rows = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise InputError(f"--fixes: {p} line {n} is not JSON") from None
        if not isinstance(row, dict):
            raise InputError(f"--fixes: {p} line {n} is not a JSON object")
        if row.get("fix") is not None:
            rows.append(row)
    if not rows:
        raise InputError(f"--fixes: {p} holds no fix trial")
    return rows
