"""Loaders for the misalignment benchmarks in their published formats, and ShapesWorld.

Every loader yields `Sample`s: an image (path or PIL image), a caption, and whichever labels
the benchmark has (original vs foiled, the foil word(s), per-word labels, a human score).
The benchmark is chosen by name, never guessed from a file path.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError


@dataclass
class Sample:
    """One (image, caption) pair with its labels.

    foil_spans: [start, end) character spans of the foiled/hallucinated word(s) in `caption`.
    word_labels: (start, end, label) per benchmark token, label 1 = misaligned.
    """

    id: str
    image: object
    caption: str
    is_original: bool | None = None
    foil_words: list[str] = field(default_factory=list)
    foil_spans: list[tuple[int, int]] = field(default_factory=list)
    word_labels: list[tuple[int, int, int]] | None = None
    human_score: float | None = None
    misalignment_text: str | None = None
    kind: str | None = None


def _spans_of(caption: str, word: str) -> list[tuple[int, int]]:
    """Spans of `word` as a whole word in `caption` (case-insensitive)."""
    return [m.span() for m in re.finditer(rf"(?<!\w){re.escape(word)}(?!\w)", caption, re.I)]


def _read_json(path: Path):
    if not path.exists():
        raise InputError(f"benchmark file not found: {path}")
    text = path.read_text()
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    return json.loads(text)


def _image_path(root: Path, p: str) -> str:
    q = Path(p)
    return str(q if q.is_absolute() else root / q)


def load_foil(path: str | Path, images_dir: str | Path | None = None) -> Iterator[Sample]:
    """FOIL-COCO json: `annotations[*]` (caption, foil, foil_word, image_id, id) and
    `images[*]` (id, file_name). Originals have foil=false (foil_word "ORIG")."""
    path = Path(path)
    data = _read_json(path)
    root = Path(images_dir) if images_dir else path.parent
    files = {im["id"]: im["file_name"] for im in data["images"]}
    for i, ann in enumerate(data["annotations"]):
        foil_word = ann.get("foil_word")
        is_foil = bool(ann.get("foil", foil_word not in (None, "", "ORIG")))
        cap = ann["caption"].strip()
        yield Sample(
            str(ann.get("id", i)),
            _image_path(root, files[ann["image_id"]]),
            cap,
            is_original=not is_foil,
            foil_words=[foil_word] if is_foil else [],
            foil_spans=_spans_of(cap, foil_word) if is_foil else [],
        )


def load_nocaps_foil(path: str | Path, images_dir: str | Path | None = None) -> Iterator[Sample]:
    """nocaps-FOIL: records with `foil`, `baseline`, `replacement` [orig, foil], `image_path`,
    `domain`; each record yields its foiled caption and its original caption."""
    path = Path(path)
    root = Path(images_dir) if images_dir else path.parent
    for i, rec in enumerate(_read_json(path)):
        img = _image_path(root, rec["image_path"])
        orig_word, foil_word = rec["replacement"]
        foil = rec["foil"].strip()
        yield Sample(
            f"{i}-foil",
            img,
            foil,
            is_original=False,
            foil_words=[foil_word],
            foil_spans=_spans_of(foil, foil_word),
            kind=rec.get("domain"),
        )
        yield Sample(
            f"{i}-orig", img, rec["baseline"].strip(), is_original=True, kind=rec.get("domain")
        )


def load_hat(path: str | Path, images_dir: str | Path | None = None) -> Iterator[Sample]:
    """HAT: records with `caption`, `image_path`, `grounding` as [token, is_hallucinated]."""
    path = Path(path)
    root = Path(images_dir) if images_dir else path.parent
    for i, rec in enumerate(_read_json(path)):
        cap = rec["caption"].strip()
        labels, pos, bad = [], 0, []
        for token, flag in rec["grounding"]:
            start = cap.lower().find(str(token).lower(), pos)
            if start < 0:
                continue
            end = start + len(str(token))
            labels.append((start, end, int(bool(flag))))
            if flag:
                bad.append((start, end))
            pos = end
        yield Sample(
            str(rec.get("id", i)),
            _image_path(root, rec["image_path"]),
            cap,
            is_original=not bad,
            foil_words=[cap[s:e] for s, e in bad],
            foil_spans=bad,
            word_labels=labels,
        )


RICHHF_TOKEN = re.compile(r"[^,.?!\":;\s]+")


def richhf_tokens(prompt: str) -> list[tuple[int, int]]:
    """Rich-HF prompt tokens: split on `,.?!":;` and whitespace; spans in the prompt."""
    return [m.span() for m in RICHHF_TOKEN.finditer(prompt)]


def load_richhf(
    path: str | Path, images_dir: str | Path | None = None, prompts: str | Path | None = None
) -> Iterator[Sample]:
    """Rich-HF tfrecord: `filename`, `misalignment_score`, `prompt_misalignment_label` (0/1 per
    prompt token, space-separated). The prompt comes from a `prompt` feature when the record
    has one, else from `prompts` (a JSON object filename -> prompt)."""
    try:
        from tfrecord.reader import tfrecord_loader
    except ImportError as e:
        raise InputError(
            "reading Rich-HF needs the tfrecord package: pip install 'clip4dm[benchmarks]'"
        ) from e
    path = Path(path)
    if not path.exists():
        raise InputError(f"benchmark file not found: {path}")
    root = Path(images_dir) if images_dir else path.parent
    mapping = json.loads(Path(prompts).read_text()) if prompts else {}
    for rec in tfrecord_loader(str(path), None):
        fname = bytes(rec["filename"]).decode()
        prompt = bytes(rec["prompt"]).decode() if "prompt" in rec else mapping.get(fname)
        if prompt is None:
            raise InputError(
                f"no prompt for {fname}: the record has no 'prompt' feature and "
                "no --prompts mapping names it"
            )
        labels = bytes(rec["prompt_misalignment_label"]).decode().split()
        spans = richhf_tokens(prompt)
        if len(labels) != len(spans):
            raise InputError(f"{fname}: {len(labels)} labels for {len(spans)} prompt tokens")
        wl = [(s, e, int(lab)) for (s, e), lab in zip(spans, labels)]
        score = float(rec["misalignment_score"][0])
        yield Sample(
            fname,
            _image_path(root, fname),
            prompt,
            is_original=None,
            word_labels=wl,
            human_score=score,
            foil_spans=[(s, e) for s, e, lab in wl if lab],
        )


def load_seetrue(path: str | Path, images_dir: str | Path | None = None) -> Iterator[Sample]:
    """SeeTRUE-Feedback (`mismatch-quest/SeeTRUE-Feedback`): `image`, `image_caption`,
    `caption_misalignment`, `dataset_source`. Reads a `datasets.save_to_disk` folder, or a
    JSON/JSONL export whose `image` fields are paths."""
    path = Path(path)
    if path.is_dir():
        try:
            from datasets import load_from_disk
        except ImportError as e:
            raise InputError(
                "reading a saved HF dataset needs `pip install datasets`; or "
                "export it to JSONL with image paths"
            ) from e
        records = load_from_disk(str(path))
        root = path
    else:
        records = _read_json(path)
        root = Path(images_dir) if images_dir else path.parent
    for i, rec in enumerate(records):
        img = rec["image"]
        img = _image_path(root, img) if isinstance(img, str) else img
        yield Sample(
            str(rec.get("id", i)),
            img,
            rec["image_caption"].strip(),
            misalignment_text=rec.get("caption_misalignment"),
            kind=rec.get("dataset_source"),
        )


def load_shapes_foil(n: int = 1000, seed: int | None = None) -> Iterator[Sample]:
    """The held-out ShapesWorld FOIL set, rendered in memory: each item yields its foiled
    caption (with the foil word's span and kind) and its original caption."""
    from shapesworld import HELD_OUT_SEED, foil_set

    for ex in foil_set(n, seed=HELD_OUT_SEED if seed is None else seed):
        img = ex.image()
        f = ex.foil
        yield Sample(
            f"{ex.id}-foil",
            img,
            f.foil,
            is_original=False,
            foil_words=[f.foil_word],
            foil_spans=[(f.start, f.end)],
            kind=f.kind,
        )
        yield Sample(f"{ex.id}-orig", img, f.original, is_original=True, kind=f.kind)


BENCHMARKS = {
    "foil": (load_foil, "most-negative"),
    "nocaps-foil": (load_nocaps_foil, "most-negative"),
    "hat": (load_hat, "threshold"),
    "richhf": (load_richhf, "threshold"),
    "seetrue": (load_seetrue, "threshold"),
    "shapes-foil": (load_shapes_foil, "most-negative"),
}


def load_benchmark(name: str, data: str | Path | None = None, **kwargs) -> list[Sample]:
    """All samples of benchmark `name` (see BENCHMARKS) from `data`."""
    if name not in BENCHMARKS:
        raise InputError(f"unknown benchmark {name!r}; choose from {', '.join(BENCHMARKS)}")
    loader, _ = BENCHMARKS[name]
    if name == "shapes-foil":
        return list(loader(**kwargs))
    if data is None:
        raise InputError(f"benchmark {name!r} needs --data PATH")
    try:
        return list(loader(data, **kwargs))
    except InputError:
        raise
    except (ValueError, KeyError, TypeError, IndexError, AttributeError, OSError) as e:
        # json errors are ValueErrors; a record without the published fields is a KeyError.
        from ..errors import short_reason

        raise InputError(
            f"{data} is not a {name} file in its published format ({short_reason(e)})"
        ) from None
