"""`clip4dm` command line: a thin layer over the library. Errors: one line on stderr, exit 2."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings

from .errors import Clip4dmError

DEFAULT_MODEL = "shapes-tiny"


def _add_detector_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help="shipped name, local directory, open_clip name, hf-hub:org/repo or "
        f"transformers hub id (default: {DEFAULT_MODEL})",
    )
    p.add_argument("--pretrained", default=None, help="open_clip pretrained tag or checkpoint")
    p.add_argument("--layers", type=int, default=None, help="last K text layers (default 3)")
    p.add_argument("--threshold", type=float, default=None, help="eps (default -5e-5)")
    p.add_argument("--template", default=None, help='caption prefix (default "A photo depicts ")')
    p.add_argument("--mode", choices=["threshold", "most-negative"], default=None)
    p.add_argument("--method", choices=["gradient", "occlusion"], default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="fp32")


def _detector(args):
    from .detector import MisalignmentDetector

    return MisalignmentDetector.from_pretrained(
        args.model,
        args.pretrained,
        device=args.device,
        dtype=args.dtype,
        layers=args.layers,
        threshold=args.threshold,
        template=args.template,
        mode=args.mode,
        method=args.method,
    )


def _cmd_check(args) -> int:
    from .images import load_image

    image = load_image(args.image)  # fail on a bad image before loading a model
    det = _detector(args)
    report = det(image, args.caption)
    if args.figure:
        from .figures import render_report

        render_report(image, report).save(args.figure)
    if args.json:
        d = report.to_dict()
        print(
            json.dumps(
                {
                    k: d[k]
                    for k in (
                        "caption",
                        "clip_score",
                        "f_clip_score",
                        "sum_negative_attribution",
                        "misaligned_words",
                        "words",
                        "cosine",
                        "truncated",
                    )
                }
            )
        )
        return 0
    tty = sys.stdout.isatty()
    print(report.highlighted(color=tty))
    print(
        f"CLIPScore {report.clip_score:.4f}   F-CLIPScore {report.f_clip_score:.6f}   "
        f"misaligned: {', '.join(report.misaligned_words) or '(none)'}"
    )
    for w in report.words:
        score = "  unscored" if w.score is None else f"{w.score:+.6f}"
        mark = "  <-- misaligned" if w.misaligned else ""
        print(f"  {w.word:<20} {score}{mark}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="clip4dm", description="Word-level image-caption misalignment from CLIP (CLIP4DM)."
    )
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("check", help="which words of CAPTION does IMAGE contradict?")
    c.add_argument("image")
    c.add_argument("caption")
    _add_detector_args(c)
    c.add_argument("--json", action="store_true", help="print one JSON object")
    c.add_argument("--figure", default=None, help="also save a picture of the report (PNG)")
    c.set_defaults(func=_cmd_check)
    from . import cli_data

    cli_data.add_commands(sub, _add_detector_args)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Our warnings (e.g. over-long captions) go to stderr; third-party libraries log their own
    # error before raising, which we already turn into one clear line, so silence the root.
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("clip4dm: warning: %(message)s"))
    ours = logging.getLogger("feedback")
    ours.handlers[:] = [handler]
    ours.setLevel(logging.WARNING)
    ours.propagate = False
    logging.getLogger().setLevel(logging.CRITICAL)
    # The library warns through `warnings` and logging; on the CLI the log line is enough.
    warnings.filterwarnings("ignore", message="caption is .* tokens")
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
