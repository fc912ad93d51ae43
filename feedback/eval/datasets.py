"""Loaders for the misalignment benchmarks in their published formats, and ShapesWorld.

Every loader yields `Sample`s: an image (path or PIL image), a caption, and whichever labels
the benchmark has (original vs foiled, the foil word(s), per-word labels, a human score).
The benchmark is chosen by name, never guessed from a file path.
"""

from __future__ import annotations

import csv
import json
import re
import struct
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
    """A JSON document, or JSON Lines (one object per line: `.jsonl`, or what `to_json` writes
    under any name)."""
    if not path.exists():
        raise InputError(f"benchmark file not found: {path}")
    if path.is_dir():
        raise InputError(f"{path} is a folder; give the benchmark file")
    text = path.read_text(encoding="utf-8")
    if path.suffix != ".jsonl":
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            if not e.msg.startswith("Extra data"):
                raise
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _records(data, path: Path) -> list[dict]:
    """`data` as a list of objects, else an InputError naming the file."""
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise InputError(f"{path}: expected a list of records (JSON objects)")
    return data


def _image_path(root: Path, p: str) -> str:
    q = Path(p)
    return str(q if q.is_absolute() else root / q)


def load_foil(path: str | Path, images_dir: str | Path | None = None) -> Iterator[Sample]:
    """FOIL-COCO json: `annotations[*]` (id, foil_id, image_id, caption, foil, foil_word,
    target_word) and `images[*]` (id, file_name). Originals have foil=false (foil_word "ORIG").

    The sample id is `foil_id`: `id` is the COCO caption id, which an original shares with
    the foils made from it."""
    path = Path(path)
    data = _read_json(path)
    root = Path(images_dir) if images_dir else path.parent
    files = {im["id"]: im["file_name"] for im in data["images"]}
    for i, ann in enumerate(data["annotations"]):
        foil_word = ann.get("foil_word")
        is_foil = bool(ann.get("foil", foil_word not in (None, "", "ORIG")))
        cap = ann["caption"].strip()
        if "foil_id" in ann:
            sid = str(ann["foil_id"])
        else:
            sid = f"{ann.get('id', i)}-{'foil' if is_foil else 'orig'}"
        if ann["image_id"] not in files:
            raise InputError(
                f"{path}: annotation {sid} names image_id {ann['image_id']!r}, "
                "which `images` does not list"
            )
        yield Sample(
            sid,
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
    for i, rec in enumerate(_records(_read_json(path), path)):
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


_WORD_CORE = re.compile(r"\w(?:.*\w)?")


def load_hat(path: str | Path, images_dir: str | Path | None = None) -> Iterator[Sample]:
    """HAT: records with `sample_id`, `caption`, `image_path`, `grounding` as
    [token, is_hallucinated], `references`. The sample id is `sample_id`."""
    path = Path(path)
    root = Path(images_dir) if images_dir else path.parent
    for i, rec in enumerate(_records(_read_json(path), path)):
        cap = rec["caption"].strip()
        labels, pos, bad = [], 0, []
        for token, flag in rec["grounding"]:
            start = cap.lower().find(str(token).lower(), pos)
            if start < 0:
                continue
            pos = start + len(str(token))
            # A grounding token may carry punctuation ("frisbee,"): label its word part.
            core = _WORD_CORE.search(cap, start, pos)
            span = core.span() if core else (start, pos)
            labels.append((*span, int(bool(flag))))
            if flag:
                bad.append(span)
        yield Sample(
            str(rec.get("sample_id", i)),
            _image_path(root, rec["image_path"]),
            cap,
            is_original=not bad,
            foil_words=[cap[s:e] for s, e in bad],
            foil_spans=bad,
            word_labels=labels,
        )


# The official RichHF-18K tokenization (richhf_18k/match_label_to_token.py): split on these
# characters and the literal space only (a newline or a tab is part of a token), drop empties.
RICHHF_TOKEN = re.compile(r'[^,.?!":; ]+')


def richhf_tokens(prompt: str) -> list[tuple[int, int]]:
    """[start, end) spans of the Rich-HF prompt tokens, in the official tokenization."""
    return [m.span() for m in RICHHF_TOKEN.finditer(prompt)]


def _richhf_prompt(fname: str, root: Path, mapping: dict) -> str:
    """The prompt of record `fname`: from the --prompts mapping (by filename or stem), else
    `<images>/<stem>.txt` as the authors' download script writes it beside `<stem>.png`."""
    stem = Path(fname).stem
    for key in (fname, stem):
        if key in mapping:
            return str(mapping[key])
    txt = root / f"{stem}.txt"
    if txt.is_file():
        return txt.read_text(encoding="utf-8")
    raise InputError(
        f"no prompt for {fname}: {txt} does not exist"
        + (" and --prompts does not name it" if mapping else "")
        + " (--images must be the folder holding <stem>.png and <stem>.txt)"
    )


def _check_tfrecord(path: Path) -> None:
    """Walk the record frames (length, its masked CRC, data, data CRC) before the reader does:
    on a file that is not a TFRecord it would trust a garbage length and allocate that much."""
    from tfrecord.writer import TFRecordWriter

    size = path.stat().st_size
    with path.open("rb") as f:
        while f.tell() < size:
            head = f.read(12)
            if len(head) != 12 or TFRecordWriter.masked_crc(head[:8]) != head[8:]:
                raise InputError(f"{path} is not a TFRecord file (bad record header)")
            (length,) = struct.unpack("<Q", head[:8])
            if f.tell() + length + 4 > size:
                raise InputError(f"{path} is not a TFRecord file or is truncated")
            f.seek(length + 4, 1)


def load_richhf(
    path: str | Path, images_dir: str | Path | None = None, prompts: str | Path | None = None
) -> Iterator[Sample]:
    """Rich-HF (RichHF-18K) tfrecord: `filename`, `misalignment_score`,
    `prompt_misalignment_label` (one label per prompt token, space-separated; "0" =
    misaligned, "1" = aligned, as the official reader documents).

    Records carry no prompt: it is read from `<images>/<stem>.txt` (beside the image
    `<images>/<stem>.png`, as the authors' download script writes them), or from `prompts`
    (a JSON object filename or stem -> prompt) when given. A record with no misaligned token
    counts as an original caption, as in the authors' evaluation."""
    try:
        from tfrecord.reader import tfrecord_loader
    except ImportError as e:
        raise InputError(
            "reading Rich-HF needs the tfrecord package: pip install 'clip4dm[benchmarks]'"
        ) from e
    path = Path(path)
    if not path.is_file():
        raise InputError(f"benchmark file not found: {path}")
    _check_tfrecord(path)
    root = Path(images_dir) if images_dir else path.parent
    mapping = {}
    if prompts:
        mapping = _read_json(Path(prompts))
        if not isinstance(mapping, dict):
            raise InputError(f"--prompts {prompts}: expected a JSON object filename -> prompt")
    for rec in tfrecord_loader(str(path), None):
        fname = bytes(rec["filename"]).decode()
        prompt = _richhf_prompt(fname, root, mapping)
        labels = bytes(rec["prompt_misalignment_label"]).decode().split()
        if any(lab not in ("0", "1") for lab in labels):
            raise InputError(f"{fname}: prompt_misalignment_label must be 0/1 per token")
        spans = richhf_tokens(prompt)
        if len(labels) != len(spans):
            raise InputError(f"{fname}: {len(labels)} labels for {len(spans)} prompt tokens")
        wl = [(s, e, int(lab == "0")) for (s, e), lab in zip(spans, labels)]
        bad = [(s, e) for s, e, lab in wl if lab]
        image = root / f"{Path(fname).stem}.png"
        if not image.exists() and (root / fname).exists():
            image = root / fname
        yield Sample(
            fname,
            str(image),
            prompt,
            is_original=not bad,
            foil_words=[prompt[s:e] for s, e in bad],
            foil_spans=bad,
            word_labels=wl,
            human_score=float(rec["misalignment_score"][0]),
        )


def _seetrue_image(rec: dict, root: Path, where: str):
    """The image of a SeeTRUE-Feedback record: a PIL image (saved dataset), a path string,
    `{"bytes", "path"}` (a `to_json` export; bytes as base64 or a list of ints), or only
    `image_name` (the published CSV). Paths resolve against `root` (--images)."""
    import base64
    import io

    from PIL import Image

    img = rec.get("image")
    if isinstance(img, dict):
        data = img.get("bytes")
        if data:
            if isinstance(data, str):
                try:
                    data = base64.b64decode(data, validate=True)
                except ValueError:
                    raise InputError(f"{where}: image bytes are not base64") from None
            elif isinstance(data, list):
                data = bytes(data)
            if not isinstance(data, bytes):
                raise InputError(f"{where}: cannot read image bytes of type {type(data).__name__}")
            im = Image.open(io.BytesIO(data))
            im.load()
            return im
        img = img.get("path")
    if img is None or img == "":
        img = rec.get("image_name")
    if isinstance(img, str) and img:
        q = Path(img)
        if not q.is_absolute():
            return str(root / q)
        # An absolute path from the machine that exported the file: look in --images.
        return str(q if q.exists() else root / q.name)
    if img is not None and hasattr(img, "size"):  # a decoded PIL image
        return img
    raise InputError(f"{where}: no image (expected `image` or `image_name`)")


def _seetrue_records(path: Path) -> tuple[list[dict], Path | None]:
    """Records of any published SeeTRUE-Feedback form, and the folder that relative image
    paths default to (None: beside the file)."""
    if path.is_dir():
        try:
            from datasets import DatasetDict, load_from_disk
        except ImportError as e:
            raise InputError(
                f"{path} is a saved HF dataset; reading it needs the datasets package: "
                "pip install 'clip4dm[benchmarks]'"
            ) from e
        try:
            ds = load_from_disk(str(path))
        except FileNotFoundError as e:
            from ..errors import short_reason

            raise InputError(
                f"{path} is not a dataset saved with save_to_disk ({short_reason(e)})"
            ) from None
        if isinstance(ds, DatasetDict):
            if "test" not in ds:
                raise InputError(f"{path}: no 'test' split (splits: {', '.join(ds) or 'none'})")
            ds = ds["test"]
        return list(ds), path
    if not path.exists():
        raise InputError(f"benchmark file not found: {path}")
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        if rows and not {"image_caption", "image_name"} <= set(rows[0]):
            raise InputError(
                f"{path}: a SeeTRUE-Feedback CSV needs the columns image_caption and image_name"
            )
        return rows, None
    return _records(_read_json(path), path), None


def load_seetrue(path: str | Path, images_dir: str | Path | None = None) -> Iterator[Sample]:
    """SeeTRUE-Feedback (`mismatch-quest/SeeTRUE-Feedback`): `image` or `image_name`,
    `image_caption`, `caption_misalignment`, `dataset_source`. Reads the `load_dataset(...)`
    result saved with `save_to_disk` (the `test` split of a DatasetDict, or one split saved
    alone), its `to_json` export (`image` as {"bytes", "path"}), or the published CSV
    (`image_name` resolved against `images_dir`, default: beside the file). Every record with
    a `caption_misalignment` is a misaligned pair, as in the authors' evaluation."""
    path = Path(path)
    records, default_root = _seetrue_records(path)
    root = Path(images_dir) if images_dir else (default_root or path.parent)
    for i, rec in enumerate(records):
        where = f"{path.name} record {i}"
        caption = rec["image_caption"]
        if not isinstance(caption, str) or not caption.strip():
            raise InputError(f"{where}: empty image_caption")
        text = rec.get("caption_misalignment")
        text = text.strip() if isinstance(text, str) and text.strip() else None
        yield Sample(
            str(i),
            _seetrue_image(rec, root, where),
            caption.strip(),
            is_original=text is None,
            misalignment_text=text,
            kind=rec.get("dataset_source") or None,
        )


BENCHMARKS = {
    "foil": (load_foil, "most-negative"),
    "nocaps-foil": (load_nocaps_foil, "most-negative"),
    "hat": (load_hat, "threshold"),
    "richhf": (load_richhf, "threshold"),
    "seetrue": (load_seetrue, "threshold"),
}
#: benchmarks rendered in memory (no --data), and per benchmark which words are content
#: words (the rest are never scored as hits or misses); both filled by `register_benchmark`
NO_DATA: set[str] = set()
CONTENT: dict = {}


def register_benchmark(
    name: str, loader, mode: str = "threshold", *, needs_data: bool = True, content=None
) -> None:
    """Add a benchmark to `load_benchmark` and `clip4dm eval` (the offline testbed registers
    its `shapes-foil` this way, so this package never imports it). `loader(data, **kw)` (or
    `loader(**kw)` with `needs_data=False`) yields `Sample`s; `mode` is the detector's mode the
    benchmark is scored in; `content(word) -> bool` marks the words that count."""
    BENCHMARKS[name] = (loader, mode)
    if not needs_data:
        NO_DATA.add(name)
    if content is not None:
        CONTENT[name] = content


_BAD_FILE = (
    ValueError,
    KeyError,
    TypeError,
    IndexError,
    AttributeError,
    OSError,
    ArithmeticError,
    RuntimeError,
    struct.error,
    csv.Error,
)


def load_benchmark(name: str, data: str | Path | None = None, **kwargs) -> list[Sample]:
    """All samples of benchmark `name` (see BENCHMARKS) from `data`."""
    if name not in BENCHMARKS:
        raise InputError(f"unknown benchmark {name!r}; choose from {', '.join(BENCHMARKS)}")
    loader, _ = BENCHMARKS[name]
    if name in NO_DATA:
        return list(loader(**kwargs))
    if data is None:
        raise InputError(f"benchmark {name!r} needs --data PATH")
    try:
        return list(loader(data, **kwargs))
    except InputError:
        raise
    except _BAD_FILE as e:
        # json errors are ValueErrors; a record without the published fields is a KeyError;
        # a file that is not a tfrecord makes its reader overflow or fail to unpack.
        from ..errors import short_reason

        raise InputError(
            f"{data} is not a {name} file in its published format ({short_reason(e)})"
        ) from None
