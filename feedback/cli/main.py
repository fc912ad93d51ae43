"""The detector's command line (check, score, eval, calibrate): a thin layer over the library.
Errors: one line on stderr, exit 2.

This package imports nothing from `generation`: the `clip4dm` entry point is
`generation.cli:main`, which adds the loop's commands (demo, generate, app) through
`build_parser(extra_commands=...)`. `python -m feedback.cli` runs the detector's commands only.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path

from ..errors import Clip4dmError, InputError
from .options import DEFAULT_MODEL, add_detector_args, build_detector

__all__ = ["DEFAULT_MODEL", "build_parser", "main"]


def check_figure_path(path: str) -> Path:
    """Fail before any model loads if the figure cannot be written where asked."""
    from PIL import Image

    p = Path(path).expanduser()
    if p.is_dir():
        raise InputError(f"--figure is a directory; give a file name such as {p / 'report.png'}")
    if not p.parent.is_dir():
        raise InputError(f"--figure: folder does not exist: {p.parent}")
    ext = p.suffix.lower()
    fmt = Image.registered_extensions().get(ext)
    if fmt is None or fmt not in Image.SAVE:
        raise InputError(
            f"--figure: cannot write images as {ext or 'a file without extension'!r}; "
            "use .png, .jpg or .webp"
        )
    return p


def _cmd_check(args) -> int:
    from ..images import load_image

    figure = check_figure_path(args.figure) if args.figure else None
    image = load_image(args.image)  # fail on a bad image before loading a model
    det = build_detector(args)
    if args.regions:
        report = det.detect_regions([image], [args.caption])[0]
    else:
        report = det(image, args.caption)
    if figure is not None:
        from ..figures import render_report

        try:
            render_report(image, report).save(figure)
        except OSError as e:
            raise InputError(f"--figure: cannot write {figure}: {e}") from None
    if args.json:
        d = report.to_dict()
        keys = (
            "caption",
            "clip_score",
            "f_clip_score",
            "sum_negative_attribution",
            "misaligned_words",
            "words",
            "cosine",
            "truncated",
        )
        if args.regions:
            keys += ("score", "regional", "size", "phrases", "relations", "missing")
        settings = {"model": args.model, **det.config.to_dict(), "dtype": args.dtype}
        if args.regions:
            settings["regions"] = True
        print(json.dumps({**{k: d[k] for k in keys}, "settings": settings}))
        return 0
    tty = sys.stdout.isatty()
    print(report.highlighted(color=tty))
    print(
        f"CLIPScore {report.clip_score:.4f}   F-CLIPScore {report.f_clip_score:.6f}   "
        f"misaligned: {', '.join(report.misaligned_words) or '(none)'}"
    )
    if getattr(report, "regional", False):
        print(f"region score {report.score:.4f} (the weakest object on its region)")
        for p in report.phrases:
            state = "" if p.found else "   <-- found nowhere"
            print(f"  object {p.text!r}: box {_box(p.box)}, cosine {p.cosine:.4f}{state}")
        for r in report.relations:
            verdict = {True: "holds", False: "SWAPPED", None: "not judged"}[r.holds]
            margin = "" if r.margin is None else f" (margin {r.margin:+.4f})"
            print(f"  relation {r.text!r}: {verdict}{margin}")
    for w in report.words:
        score = "  unscored" if w.score is None else f"{w.score:+.6f}"
        mark = "  <-- misaligned" if w.misaligned else ""
        where = ""
        if getattr(w, "reason", "image") != "image":
            where = f"  [{w.reason}{', box ' + _box(w.box) if w.box else ''}]"
        print(f"  {w.word:<20} {score}{where}{mark}")
    return 0


def _box(box) -> str:
    return "(" + ", ".join(f"{v:.0f}" for v in box) + ")"


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("clip4dm")
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser(extra_commands: Sequence[Callable] = ()) -> argparse.ArgumentParser:
    """The parser; each of `extra_commands` is `add_commands(subparsers)` from a package above
    (the composition root passes generation's)."""
    p = argparse.ArgumentParser(
        prog="clip4dm",
        description="Word-level image-caption misalignment from CLIP (CLIP4DM).",
        allow_abbrev=False,
    )
    p.add_argument("--version", action="version", version=f"clip4dm {_version()}")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("check", help="which words of CAPTION does IMAGE contradict?")
    c.add_argument("image", help="image file (any format and mode PIL reads)")
    c.add_argument("caption", help="the caption or prompt to check, quoted")
    add_detector_args(c)
    c.add_argument("--json", action="store_true", help="print one JSON object")
    c.add_argument(
        "--figure", default=None, help="also save a picture of the report (.png, .jpg, .webp)"
    )
    c.add_argument(
        "--regions",
        action="store_true",
        help="judge each object phrase on its own region and each placement by where the "
        "objects are (feedback.regions): which word, and where (boxes in the JSON and figure)",
    )
    c.set_defaults(func=_cmd_check)
    from . import data as cli_data

    cli_data.add_commands(sub)
    for add in extra_commands:
        add(sub)
    return p


@contextmanager
def _quiet_libraries():
    """For the duration of a command: our warnings as one `clip4dm: warning:` line each,
    third-party loggers silenced (their errors become our one-line error). Everything is
    restored afterwards, so calling `main()` in-process changes no global state."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.CRITICAL)
    # transformers and diffusers log through their own handlers (not the root's): their
    # per-call messages (e.g. the tokenizer's truncation notice for every long prompt) would
    # flood stderr where our own one-line warning already says it.
    # Both set their level when first imported (from *_VERBOSITY), so set that too.
    libs = {n: logging.getLogger(n) for n in ("transformers", "diffusers")}
    lib_levels = {n: lg.level for n, lg in libs.items()}
    for lg in libs.values():
        lg.setLevel(logging.ERROR)
    env = {k: os.environ.get(k) for k in ("TRANSFORMERS_VERBOSITY", "DIFFUSERS_VERBOSITY")}
    for k, v in env.items():
        if v is None:
            os.environ[k] = "error"

    def show(message, category, filename, lineno, file=None, line=None):
        print(f"clip4dm: warning: {message}", file=sys.stderr)

    # our own libraries log through `logging` (feedback.*, generation.*): each warning one line
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("clip4dm: warning: %(message)s"))
    ours = [logging.getLogger(n) for n in ("feedback", "generation")]
    saved = [(lg.level, lg.propagate) for lg in ours]
    for lg in ours:
        lg.addHandler(handler)
        lg.setLevel(logging.WARNING)
        lg.propagate = False
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.showwarning = show
        try:
            yield
        finally:
            root.setLevel(level)
            for lg, (lvl, prop) in zip(ours, saved):
                lg.removeHandler(handler)
                lg.setLevel(lvl)
                lg.propagate = prop
            for n, lg in libs.items():
                lg.setLevel(lib_levels[n])
            for k, v in env.items():
                if v is None:
                    os.environ.pop(k, None)


def main(argv: list[str] | None = None, *, extra_commands: Sequence[Callable] = ()) -> int:
    args = build_parser(extra_commands).parse_args(argv)
    with _quiet_libraries():
        try:
            return int(args.func(args) or 0)
        except Clip4dmError as e:
            print(f"clip4dm: error: {e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("clip4dm: interrupted", file=sys.stderr)
            return 130


if __name__ == "__main__":
    sys.exit(main())
