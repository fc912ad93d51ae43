"""Prompt sources from the user's own prompts: a text file read into a list, a held-out
validation slice, and a deterministic cycle through the rest (the `prompts_for(round,
process)` that `run_rounds` takes).

A prompt file is UTF-8 text, one prompt per line; empty lines are skipped and each line is
stripped. Prompts may carry the SD weight syntax (`generation.prompt_syntax`): `clean` gives
the text a detector scores and a caption is trained on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np


def read_prompts(path: str | Path, flag: str = "--prompts") -> list[str]:
    """The prompts of `path`, one a line (empty lines skipped). Raises `ValueError` with one
    line naming `flag` for a missing file, a file that is not UTF-8 text, or one with no
    prompt."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ValueError(f"{flag}: no such file: {path}")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{flag} {path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    prompts = [line.strip() for line in text.splitlines()]
    prompts = [x for x in prompts if x]
    if not prompts:
        raise ValueError(f"{flag} {path}: no prompts (the file is empty; one prompt a line)")
    return prompts


def clean(prompt: str) -> str:
    """`prompt` without its weight syntax (`generation.prompt_syntax.parse_prompt(p).text`):
    what the detector scores and what a caption is trained on."""
    from generation.prompt_syntax import parse_prompt

    return parse_prompt(prompt).text


def split_validation(
    prompts: Sequence[str], n_val: int, seed: int = 0
) -> tuple[list[str], list[str]]:
    """(training, validation): `n_val` prompts held out by a seeded shuffle (the rest keep
    their file order). At least one prompt stays for training; `ValueError` otherwise."""
    prompts = list(prompts)
    if n_val <= 0:
        return prompts, []
    if n_val >= len(prompts):
        raise ValueError(
            f"cannot hold {n_val} validation prompt(s) out of {len(prompts)}: give "
            "--validation-prompts FILE or more prompts"
        )
    held = set(np.random.default_rng([seed, 7]).permutation(len(prompts))[:n_val].tolist())
    return (
        [p for i, p in enumerate(prompts) if i not in held],
        [p for i, p in enumerate(prompts) if i in held],
    )


def cycling_prompts(
    prompts: Sequence[str], per_round: int, seed: int = 0
) -> Callable[..., list[str]]:
    """prompts_for(round, process, world=1): `per_round` prompts for that process and round.

    All processes read one stream: the prompts in a seeded shuffle, reshuffled (seed, pass)
    on every pass through the file, so each pass uses every prompt once; round r, process k
    of `world` reads positions ((r * world + k) * per_round ...). Deterministic: a resumed
    run draws the same prompts."""
    prompts = list(prompts)
    if not prompts:
        raise ValueError("no training prompts")
    n = len(prompts)
    orders: dict[int, list[int]] = {}

    def at(i: int) -> str:
        e = i // n
        if e not in orders:
            orders[e] = np.random.default_rng([seed, e]).permutation(n).tolist()
        return prompts[orders[e][i % n]]

    def prompts_for(r: int, rank: int, world: int = 1) -> list[str]:
        start = (r * world + rank) * per_round
        return [at(i) for i in range(start, start + per_round)]

    return prompts_for
