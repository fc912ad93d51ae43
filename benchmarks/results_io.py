"""Write a benchmark's table to `results/` with what made it: the command, the date, the
machine and the commit. The Results pages and the README's headline table are rendered from
these files (`python docs/render_results.py`), never typed by hand.

Each benchmark that calls `save_result` takes `--results NAME` (`add_results_argument`);
without it nothing is written, so a smoke run never replaces a measured table:

    python benchmarks/region_speed.py --results region-speed

writes `results/region-speed.json`. A file it replaces is kept, with its date, as
`results/superseded/NAME-DATE.json` (superseded tables live there, not in the README).

A results file is one JSON object:

- `name`, `title`, `kind` (the benchmark; `docs/render_results.py` knows how to turn a kind's
  raw `data` into tables when a file has no `tables`), `status` (`current`, `provisional` or
  `superseded`);
- `date` (UTC, ISO), `command` (as typed), `machine` (platform, CPU, threads, accelerator,
  torch), `commit` (`git rev-parse --short HEAD`, `-dirty` when the tree had changes),
  `source` (`benchmark` when written here);
- `tables`: a list of `{"title", "columns", "rows"}` with every cell as it is shown; `data`:
  the benchmark's raw output; `description` and `findings`: Markdown (carried over from the
  file replaced, since they are written by people).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Where results go; `CLIP4DM_RESULTS_DIR` overrides it (tests).
RESULTS_DIR = Path(os.environ.get("CLIP4DM_RESULTS_DIR", ROOT / "results"))
#: Fields written by people and carried over when a benchmark rewrites its file.
CARRIED = ("title", "description", "findings", "page", "image")


def add_results_argument(parser, default: str | None = None) -> None:
    """`--results NAME`: also write the table to `results/NAME.json` (see this module)."""
    parser.add_argument(
        "--results",
        default=default,
        metavar="NAME",
        help="also write the table, with the command, date, machine and commit, to "
        "results/NAME.json (rendered into the docs by docs/render_results.py)",
    )


def git_commit(root: Path = ROOT) -> str | None:
    """The short commit of `root`'s checkout, `-dirty` when tracked files had changes."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True
        )
        if head.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
        ).stdout.strip()
        return head.stdout.strip() + ("-dirty" if dirty else "")
    except OSError:
        return None


def machine() -> dict:
    """What the numbers were measured on (timings only compare on the same machine)."""
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["threads"] = torch.get_num_threads()
        info["accelerator"] = (
            torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (CPU)"
        )
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return info


def command(argv: list[str] | None = None) -> str:
    """The command as typed (relative to the repository root when it can be)."""
    argv = list(sys.argv if argv is None else argv)
    if argv:
        try:
            argv[0] = str(Path(argv[0]).resolve().relative_to(ROOT))
        except ValueError:
            pass
    return shlex.join(["python", *argv])


def tables_from(head: list[str], rows: list[list], title: str = "") -> dict:
    """One table of a results file: `head` the column names, `rows` the shown cells."""
    return {"title": title, "columns": list(head), "rows": [[str(c) for c in r] for r in rows]}


def save_result(
    name: str | None,
    data,
    *,
    kind: str,
    title: str | None = None,
    tables: list[dict] | None = None,
    page: str | None = None,
    status: str = "current",
    argv: list[str] | None = None,
    results_dir: Path | str | None = None,
) -> Path | None:
    """Write `results/NAME.json` (nothing when `name` is None: `--results` not given).

    `data` is the benchmark's raw output (what `--json` writes); `tables` the tables as shown
    (`tables_from`), optional where `docs/render_results.py` renders `kind` from `data`;
    `page` the Results page it belongs on (`loop`, `detector`, `finetune`, `models`, `speed`).
    Returns the path written.
    """
    if not name:
        return None
    out_dir = Path(results_dir) if results_dir is not None else RESULTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    record = {
        "name": name,
        "title": title or name,
        "kind": kind,
        "status": status,
        "date": _dt.datetime.now(_dt.timezone.utc).date().isoformat(),
        "command": command(argv),
        "machine": machine(),
        "commit": git_commit(),
        "source": "benchmark",
    }
    if page:
        record["page"] = page
    if path.exists():
        old = json.loads(path.read_text())
        for key in CARRIED:
            if old.get(key) and not (key == "title" and title) and not (key == "page" and page):
                record[key] = old[key]
        old_dir = out_dir / "superseded"
        old_dir.mkdir(exist_ok=True)
        old["status"] = "superseded"
        stem = f"{name}-{old.get('date', 'undated')}"
        target, i = old_dir / f"{stem}.json", 2
        while target.exists():
            target, i = old_dir / f"{stem}-{i}.json", i + 1
        target.write_text(json.dumps(old, indent=1, ensure_ascii=False) + "\n")
    if tables is not None:
        record["tables"] = tables
    record["data"] = data
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=1, ensure_ascii=False, default=str) + "\n")
    tmp.replace(path)
    print(f"results: wrote {path}", file=sys.stderr)
    return path
