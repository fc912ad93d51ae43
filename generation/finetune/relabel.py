"""Hindsight relabeling at the word level (IPR-style): a generated image whose words the
detector flags gets the caption it *does* show, found by trying replacements for exactly the
flagged words, so every training pair is a correct pair and the words the model confuses get
explicit examples. A scalar score cannot say which word to replace; its twin here tries every
replaceable word and keeps the caption with the highest CLIPScore.

`classes` are the candidate lists per word kind (interchangeable words: colors, object names,
sizes, relations): on ShapesWorld its vocabulary; in general, what the user gives.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from feedback import MisalignmentDetector, split_words


def _class_of(word: str, classes: Mapping[str, Sequence[str]]) -> str | None:
    w = word.lower()
    for name, members in classes.items():
        if w in members:
            return name
    return None


def candidates(prompt: str, targets, classes: Mapping[str, Sequence[str]]) -> list[str]:
    """Captions that differ from `prompt` at the words `targets` (Word spans): each replaced
    by every other member of its class, and each pair of targets of one class swapped (the
    attribute swap between two objects)."""
    out: list[str] = []
    tw = [(w, _class_of(w.text, classes)) for w in targets]
    tw = [(w, c) for w, c in tw if c is not None]

    def put(spans):
        text, last = [], 0
        for w, new in sorted(spans, key=lambda x: x[0].start):
            text += [prompt[last : w.start], new]
            last = w.end
        return "".join(text + [prompt[last:]])

    for w, c in tw:
        for v in classes[c]:
            if v != w.text.lower():
                out.append(put([(w, v)]))
    for i, (a, ca) in enumerate(tw):
        for b, cb in tw[i + 1 :]:
            if ca == cb and a.text.lower() != b.text.lower():
                out.append(put([(a, b.text), (b, a.text)]))
    seen = set()
    return [c for c in out if not (c in seen or seen.add(c))]


def relabel(
    detector: MisalignmentDetector,
    images: torch.Tensor,
    prompts: Sequence[str],
    classes: Mapping[str, Sequence[str]],
    *,
    by: str = "detector",
) -> list[str | None]:
    """One caption per image, or None to drop it.

    by="detector" (word level): an image with nothing flagged keeps its prompt; otherwise the
        flagged words' replacements are scored and the highest-CLIPScore candidate with
        nothing flagged is kept (None when none is).
    by="clip_score" (the scalar twin, equal candidates budget or more): every replaceable word
        of the prompt is tried and the caption with the highest CLIPScore kept, the prompt
        itself included.
    """
    if by not in ("detector", "clip_score"):
        raise ValueError(f"relabel by must be 'detector' or 'clip_score', got {by!r}")
    out = detector.score(images, list(prompts))
    result: list[str | None] = []
    for k, prompt in enumerate(prompts):
        words = out.words[k]
        if by == "detector":
            flagged = [w for w, m in zip(words, out.misaligned[k].tolist()) if m]
            if not flagged:
                result.append(prompt)
                continue
            cands = candidates(prompt, flagged, classes)
            if not cands:
                result.append(None)
                continue
            sc = detector.score(images[k : k + 1].expand(len(cands), -1, -1, -1), cands)
            ok = [i for i in range(len(cands)) if not bool(sc.misaligned[i].any())]
            result.append(max(ok, key=lambda i: float(sc.clip_score[i]), default=None))
            if result[-1] is not None:
                result[-1] = cands[result[-1]]
        else:
            cands = [prompt, *candidates(prompt, split_words(prompt), classes)]
            cos = detector.cosine(images[k : k + 1], cands)[0]
            result.append(cands[int(cos.argmax())])
    return result


def read_candidates(path, flag: str = "--candidates") -> dict[str, list[str]]:
    """Candidate lists from a JSON file `{word kind: [interchangeable words]}`, e.g.
    `{"color": ["red", "blue"], "animal": ["dog", "cat"]}` (words lowercased, each a single
    word, at least two per kind). Raises `ValueError` with one line naming `flag` and the
    problem (no such file, not JSON, not that shape)."""
    import json
    from pathlib import Path

    p = Path(path).expanduser()
    if not p.is_file():
        raise ValueError(f"{flag}: no such file: {path}")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{flag} {path}: not valid JSON ({e})") from None
    shape = '{"kind": ["word", "word", ...], ...}'
    if not isinstance(data, dict) or not data:
        raise ValueError(f"{flag} {path}: expected a non-empty JSON object {shape}")
    out: dict[str, list[str]] = {}
    for kind, words in data.items():
        if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
            raise ValueError(f"{flag} {path}: {kind!r} must be a list of words, as in {shape}")
        words = list(dict.fromkeys(w.strip().lower() for w in words if w.strip()))
        if len(words) < 2:
            raise ValueError(f"{flag} {path}: {kind!r} needs at least two words to swap between")
        spaced = [w for w in words if len(w.split()) > 1]
        if spaced:
            raise ValueError(
                f"{flag} {path}: {kind!r}: candidates are single words, got {spaced[0]!r}"
            )
        out[str(kind)] = words
    return out
