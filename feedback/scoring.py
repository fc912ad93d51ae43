"""Dataset-scale scoring: a JSONL manifest in, one JSONL result line per pair out.

Results are written (and flushed) batch by batch, so a killed job loses at most the batch in
flight; a rerun skips every id already written and repairs a half-written last line. Under
`accelerate launch --num_processes N` each process takes every N-th pair and writes its own
part file; the main process merges the parts into the output at the end.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from .errors import Clip4dmError, InputError
from .images import load_image


@dataclass
class ScoreSummary:
    written: int
    skipped: int
    errors: int
    out: str

    def to_dict(self) -> dict:
        return self.__dict__.copy()


def read_manifest(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        raise InputError(f"manifest not found: {path}")
    items, seen = [], set()
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}:{n}: not JSON ({e.msg})") from None
        missing = {"id", "image", "caption"} - set(rec)
        if missing:
            raise InputError(f"{path}:{n}: missing {', '.join(sorted(missing))}")
        if rec["id"] in seen:
            raise InputError(f"{path}:{n}: duplicate id {rec['id']!r}")
        seen.add(rec["id"])
        items.append(rec)
    return items


def _done_ids(path: Path) -> set:
    """Ids already in a result file; a torn last line (killed mid-write) is cut off."""
    if not path.exists():
        return set()
    data = path.read_bytes()
    cut = data.rfind(b"\n") + 1
    if cut != len(data):
        with open(path, "r+b") as f:
            f.truncate(cut)
    return {json.loads(line)["id"] for line in data[:cut].decode().splitlines() if line.strip()}


def score_manifest(
    detector,
    manifest: str | Path,
    out: str | Path,
    *,
    batch_size: int = 32,
    process_index: int = 0,
    num_processes: int = 1,
    progress: bool = True,
    wait=None,
) -> ScoreSummary:
    """Score every manifest pair not yet in `out`. `wait` is a barrier (multi-process)."""
    items = read_manifest(manifest)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    parts = [out.with_name(f"{out.name}.part{k}-of-{num_processes}") for k in range(num_processes)]
    done = _done_ids(out)
    for p in parts if num_processes > 1 else []:
        done |= _done_ids(p)
    mine = [it for i, it in enumerate(items) if i % num_processes == process_index]
    todo = [it for it in mine if it["id"] not in done]
    target = parts[process_index] if num_processes > 1 else out
    written = errors = 0
    with (
        open(target, "a") as f,
        tqdm(total=len(todo), disable=not progress, desc="score", unit="pair") as bar,
    ):
        for i in range(0, len(todo), batch_size):
            chunk = todo[i : i + batch_size]
            lines, ok_items, images = {}, [], []
            for it in chunk:
                try:
                    images.append(load_image(it["image"]))
                    ok_items.append(it)
                except Clip4dmError as e:
                    lines[it["id"]] = {"id": it["id"], "error": str(e)}
            if ok_items:
                try:
                    reports = detector.detect(images, [it["caption"] for it in ok_items])
                    for it, rep in zip(ok_items, reports):
                        lines[it["id"]] = {"id": it["id"], **rep.to_dict()}
                except Clip4dmError:
                    # One bad caption must not sink the batch: redo it pair by pair.
                    for it, im in zip(ok_items, images):
                        try:
                            lines[it["id"]] = {
                                "id": it["id"],
                                **detector(im, it["caption"]).to_dict(),
                            }
                        except Clip4dmError as e:
                            lines[it["id"]] = {"id": it["id"], "error": str(e)}
            for it in chunk:
                rec = lines[it["id"]]
                errors += "error" in rec
                f.write(json.dumps(rec) + "\n")
            f.flush()
            os.fsync(f.fileno())
            written += len(chunk)
            bar.update(len(chunk))
    if num_processes > 1:
        if wait is not None:
            wait()
        if process_index == 0:
            _merge(out, parts, [it["id"] for it in items])
    return ScoreSummary(written, len(mine) - len(todo), errors, str(out))


def _merge(out: Path, parts: list[Path], order: list) -> None:
    """Append part-file lines missing from `out`, in manifest order, then drop the parts."""
    have = _done_ids(out)
    pending = {}
    for p in parts:
        if p.exists():
            _done_ids(p)  # repair a torn line
            for line in p.read_text().splitlines():
                if line.strip():
                    rec = json.loads(line)
                    pending.setdefault(rec["id"], line)
    with open(out, "a") as f:
        for i in order:
            if i in pending and i not in have:
                f.write(pending[i] + "\n")
        f.flush()
        os.fsync(f.fileno())
    for p in parts:
        p.unlink(missing_ok=True)
