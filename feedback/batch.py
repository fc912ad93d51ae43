"""Dataset-scale scoring: a JSONL manifest in, one JSONL result line per pair out.

The whole manifest is validated first: every bad line (not JSON, not an object, a missing or
wrongly typed field, a duplicate id) is reported at once, and the good rows are scored; a
manifest with no good row is an InputError. A line without an `id` is numbered by its line
number (1-based, blank lines counted), so resuming such a manifest needs its lines kept in
place.
Results are written (and flushed) batch by batch, so a killed job loses at most the batch in
flight; a rerun skips every id already written and repairs a half-written last line. Rows
that failed (unreadable image, empty caption) are recorded as `{"id", "error"}`; a rerun with
`retry_errors=True` drops those lines and scores the rows again.

Sharding: with `num_processes` N (torchrun / accelerate ranks), process k takes every N-th
pair and writes its own part file; the main process merges the parts into the output.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from .errors import Clip4dmError, InputError
from .images import load_image
from .words import shorten


@dataclass
class ScoreSummary:
    """What one process did.

    written: result lines this process wrote in this run (errors included).
    skipped: rows of this process already in the output (resumed).
    errors: rows this run recorded as errors.
    errors_total: error lines in the whole output after the run (main process; -1 elsewhere).
    invalid: manifest lines that could not be read as rows (listed in `problems`).
    """

    written: int
    skipped: int
    errors: int
    out: str
    errors_total: int = -1
    invalid: int = 0
    problems: list[str] = field(default_factory=list)
    process_index: int = 0
    num_processes: int = 1

    def to_dict(self) -> dict:
        return asdict(self)


def read_manifest(path: str | Path) -> tuple[list[dict], list[str]]:
    """Rows of a JSONL manifest and one message per bad line (`path:line: problem`). A row
    without an `id` gets its 1-based line number (an int) as its id."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"manifest not found: {path}")
    if path.is_dir():
        raise InputError(f"manifest is a directory, not a JSONL file: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(f"manifest is not UTF-8 text: {path}") from None
    items, problems, seen, numbered = [], [], {}, set()
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            problems.append(f"{where}: not JSON ({e.msg})")
            continue
        if not isinstance(rec, dict):
            problems.append(f"{where}: expected an object with image, caption (and an id)")
            continue
        missing = {"image", "caption"} - set(rec)
        if missing:
            problems.append(f"{where}: missing {', '.join(sorted(missing))}")
            continue
        if "id" not in rec:  # numbered by its line: the same id on every rerun
            rec = {"id": n, **rec}
            numbered.add(n)
        rid = rec["id"]
        if isinstance(rid, bool) or not isinstance(rid, (str, int)):
            problems.append(f"{where}: id must be a string or an integer, got {type(rid).__name__}")
            continue
        if not isinstance(rec["image"], str) or not isinstance(rec["caption"], str):
            problems.append(f"{where}: image and caption must be strings")
            continue
        if rid in seen:
            why = ""
            if n in numbered or seen[rid] in numbered:
                line = n if n in numbered else seen[rid]
                why = f"; line {line} has no id, so its line number is its id: give it one"
            problems.append(
                f"{where}: duplicate id {shorten(str(rid))!r} (first on line {seen[rid]}{why})"
            )
            continue
        seen[rid] = n
        items.append(rec)
    return items, problems


def no_rows_message(path: str | Path, problems: list[str]) -> str:
    """The one line said when a manifest holds no row that can be scored."""
    if not problems:
        return f"manifest holds no rows (every line is empty): {path}"
    more = f" (and {len(problems) - 1} more refused lines)" if len(problems) > 1 else ""
    return f"no line of the manifest can be scored: {problems[0]}{more}"


def _read_results(path: Path) -> list[dict]:
    """Records of a result file; a torn last line (killed mid-write) is cut off the file."""
    if not path.exists():
        return []
    if path.is_dir():
        raise InputError(f"--out is a directory, not a file: {path}")
    data = path.read_bytes()
    cut = data.rfind(b"\n") + 1
    if cut != len(data):
        with open(path, "r+b") as f:
            f.truncate(cut)
    out = []
    for n, line in enumerate(data[:cut].decode("utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            rec = None
        if not isinstance(rec, dict) or "id" not in rec:
            raise InputError(
                f"{path}:{n}: not a result line; it is not this job's output or was edited "
                "(fix or delete that line, then rerun)"
            )
        out.append(rec)
    return out


def _drop_errors(path: Path) -> int:
    """Remove `{"id", "error"}` lines from a result file (atomically); returns how many."""
    recs = _read_results(path)
    keep = [r for r in recs if "error" not in r]
    if len(keep) != len(recs):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in keep))
        os.replace(tmp, path)
    return len(recs) - len(keep)


def score_manifest(
    detector,
    manifest: str | Path,
    out: str | Path,
    *,
    batch_size: int = 32,
    process_index: int = 0,
    num_processes: int = 1,
    progress: bool = True,
    retry_errors: bool = False,
    wait=None,
    regions: bool = False,
    rows: tuple[list[dict], list[str]] | None = None,
) -> ScoreSummary:
    """Score every manifest pair not yet in `out`. `wait` is a barrier (multi-process).
    regions: region-aware rows (`MisalignmentDetector.detect_regions`). rows: what
    `read_manifest(manifest)` returned, when the caller read it already. InputError when no
    line of the manifest can be scored."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch size must be a positive integer, got {batch_size!r}")
    items, problems = rows if rows is not None else read_manifest(manifest)
    if not items:
        raise InputError(no_rows_message(manifest, problems))
    out = Path(out)
    if out.is_dir():
        raise InputError(f"--out is a directory, not a file: {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    parts = [out.with_name(f"{out.name}.part{k}-of-{num_processes}") for k in range(num_processes)]
    mine_part = parts[process_index] if num_processes > 1 else out
    if retry_errors:
        if process_index == 0:
            _drop_errors(out)
        if num_processes > 1:
            _drop_errors(mine_part)
            if wait is not None:
                wait()  # nobody reads `out` before the main process rewrote it
    done = {r["id"] for r in _read_results(out)}
    if num_processes > 1:
        done |= {r["id"] for r in _read_results(mine_part)}
    mine = [it for i, it in enumerate(items) if i % num_processes == process_index]
    todo = [it for it in mine if it["id"] not in done]
    written = errors = 0
    with (
        open(mine_part, "a") as f,
        tqdm(total=len(todo), disable=not progress, desc="score", unit="pair") as bar,
    ):
        for i in range(0, len(todo), batch_size):
            chunk = todo[i : i + batch_size]
            lines = _score_chunk(detector, chunk, regions)
            for it in chunk:
                rec = lines[it["id"]]
                errors += "error" in rec
                f.write(json.dumps(rec) + "\n")
            f.flush()
            os.fsync(f.fileno())
            written += len(chunk)
            bar.update(len(chunk))
    total = -1
    if num_processes > 1 and wait is not None:
        wait()
    if process_index == 0:
        if num_processes > 1:
            _merge(out, parts, [it["id"] for it in items])
        total = sum("error" in r for r in _read_results(out))
    return ScoreSummary(
        written,
        len(mine) - len(todo),
        errors,
        str(out),
        errors_total=total,
        invalid=len(problems),
        problems=problems,
        process_index=process_index,
        num_processes=num_processes,
    )


def _score_chunk(detector, chunk: list[dict], regions: bool = False) -> dict:
    """id -> result record for one batch; bad rows become error records."""
    if regions:
        detect = detector.detect_regions

        def one(im, caption):
            return detector.detect_regions([im], [caption])[0]
    else:
        detect, one = detector.detect, detector
    c = detector.config
    # what scored this row: the model, its eps and the attribution settings
    used = {
        "model": detector.backend.name,
        "eps": c.threshold,
        "layers": c.layers,
        "mode": c.mode,
        "method": c.method,
        "template": c.template,
        "regions": bool(regions),
    }
    lines, ok_items, images = {}, [], []
    for it in chunk:
        try:
            images.append(load_image(it["image"]))
            ok_items.append(it)
        except Clip4dmError as e:
            lines[it["id"]] = {"id": it["id"], "error": str(e)}
    if ok_items:
        try:
            reports = detect(images, [it["caption"] for it in ok_items])
            for it, rep in zip(ok_items, reports):
                lines[it["id"]] = {"id": it["id"], **rep.to_dict(), "detector": used}
        except Clip4dmError:
            # One bad caption must not sink the batch: redo it pair by pair.
            for it, im in zip(ok_items, images):
                try:
                    rec = one(im, it["caption"]).to_dict()
                    lines[it["id"]] = {"id": it["id"], **rec, "detector": used}
                except Clip4dmError as e:
                    lines[it["id"]] = {"id": it["id"], "error": str(e)}
    return lines


def _merge(out: Path, parts: list[Path], order: list) -> None:
    """Append part-file lines missing from `out`, in manifest order, then drop the parts."""
    have = {r["id"] for r in _read_results(out)}
    pending = {}
    for p in parts:
        for rec in _read_results(p):
            pending.setdefault(rec["id"], rec)
    with open(out, "a") as f:
        for i in order:
            if i in pending and i not in have:
                f.write(json.dumps(pending[i]) + "\n")
        f.flush()
        os.fsync(f.fileno())
    for p in parts:
        p.unlink(missing_ok=True)
