"""Detector options shared by every `clip4dm` command, and the detector they build."""

from __future__ import annotations

import argparse

from ..errors import InputError
from ..registry import DEFAULT_MODEL  # noqa: F401  (the CLI's default --model)

#: The offline testbed's detector (ShapesWorld, shipped in the package).
TESTBED_MODEL = "shapes-tiny"
PAPER = {"layers": 3, "threshold": -5e-5}


def positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def add_detector_args(p: argparse.ArgumentParser, model: str = DEFAULT_MODEL) -> None:
    """--model, --layers, ... with help that states the defaults actually applied (`model`:
    the default detector)."""
    from ..config import DEFAULT_TEMPLATE
    from ..registry import recommended_settings

    card = recommended_settings(model)

    def default(key: str) -> str:
        if key in card:
            return (
                f"default: the model card's recommendation where the model has one "
                f"({model}: {card[key]}), else the paper's {PAPER[key]}"
            )
        return (
            "default: the model card's recommendation where the model has one (the shipped "
            f"ones do), else the paper's {PAPER[key]}"
        )

    p.add_argument(
        "--model",
        default=model,
        help="shipped name, local model folder, open_clip name, hf-hub:org/repo or "
        f"transformers hub id (default: {model})",
    )
    p.add_argument("--pretrained", default=None, help="open_clip pretrained tag or checkpoint file")
    p.add_argument(
        "--layers",
        type=positive_int,
        default=None,
        help=f"attribute the last K text layers ({default('layers')})",
    )
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        metavar="EPS",
        help=f"threshold mode flags words scoring below EPS; must be <= 0 ({default('threshold')})",
    )
    p.add_argument(
        "--template",
        default=None,
        help=f"prefix put before every caption (default: {DEFAULT_TEMPLATE!r})",
    )
    p.add_argument(
        "--mode",
        choices=["threshold", "most-negative"],
        default=None,
        help="threshold: every word below EPS; most-negative: the single lowest word "
        "(default: threshold)",
    )
    p.add_argument(
        "--method",
        choices=["gradient", "occlusion"],
        default=None,
        help="gradient: CLIP4DM; occlusion: leave-one-word-out drop in cosine, slower "
        "(default: gradient)",
    )
    p.add_argument(
        "--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1 (default: cpu)"
    )
    p.add_argument(
        "--dtype",
        choices=["fp32", "fp16", "bf16"],
        default="fp32",
        help="model weights' dtype; attribution is always summed in fp32 (default: fp32)",
    )


def build_detector(args, device: str | None = None):
    """The detector the options describe."""
    from ..detector import MisalignmentDetector
    from ..errors import ModelLoadError, OfflineError

    if args.threshold is not None and args.threshold != args.threshold:
        raise InputError("--threshold is NaN")
    try:
        return MisalignmentDetector.from_pretrained(
            args.model,
            args.pretrained,
            device=device or args.device,
            dtype=args.dtype,
            layers=args.layers,
            threshold=args.threshold,
            template=args.template,
            mode=args.mode,
            method=args.method,
        )
    except OfflineError as e:
        testbed = getattr(args, "testbed_model", TESTBED_MODEL)
        raise ModelLoadError(
            f"{str(e).splitlines()[0]}; for the offline testbed pass --model {testbed}"
        ) from None
