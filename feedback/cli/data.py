"""`clip4dm eval` and `clip4dm score`: dataset-scale commands, thin over the library."""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..errors import InputError
from .options import add_detector_args, build_detector, positive_int


def add_commands(sub) -> None:
    e = sub.add_parser("eval", help="the paper's metrics on a benchmark")
    e.add_argument(
        "--benchmark",
        required=True,
        choices=["shapes-foil", "foil", "nocaps-foil", "hat", "richhf", "seetrue"],
        help="which benchmark (shapes-foil is rendered offline; the others read --data)",
    )
    e.add_argument(
        "--data",
        default=None,
        help="benchmark file, or SeeTRUE's save_to_disk folder (not needed for shapes-foil)",
    )
    e.add_argument(
        "--images",
        default=None,
        help="folder the benchmark's image names are relative to; for richhf the folder "
        "holding <stem>.png and <stem>.txt (default: beside --data)",
    )
    e.add_argument(
        "--prompts",
        default=None,
        help="richhf: JSON object filename (or stem) -> prompt, instead of <stem>.txt",
    )
    e.add_argument(
        "--ap-positive",
        choices=["original", "foil"],
        default=None,
        help="AP's positive class: the original captions (score as is) or the foils (score "
        "negated) (default: the paper's per benchmark: original for foil, nocaps-foil, "
        "shapes-foil, seetrue; foil for hat, richhf)",
    )
    e.add_argument(
        "--n", type=positive_int, default=1000, help="shapes-foil: number of foils (default 1000)"
    )
    e.add_argument("--limit", type=positive_int, default=None, help="evaluate the first N samples")
    e.add_argument(
        "--baseline",
        choices=["random"],
        default=None,
        help="score a random word instead of the most negative one",
    )
    e.add_argument("--nli-model", default=None, help="SeeTRUE: MNLI model for the NLI score")
    e.add_argument("--out", default=None, help="write the full result as JSON")
    e.add_argument(
        "--regions",
        action="store_true",
        help="region-aware reports (feedback.regions): each object phrase judged on its own "
        "region, each placement by where the objects are",
    )
    add_detector_args(e)
    e.set_defaults(func=_cmd_eval)

    s = sub.add_parser("score", help="score a JSONL manifest of {id, image, caption}")
    s.add_argument(
        "--data",
        required=True,
        help="manifest.jsonl: one {id, image, caption} per line; a line without an id is "
        "numbered by its line number (1-based, blank lines counted), so keep such lines in "
        "place between reruns",
    )
    s.add_argument("--out", required=True, help="results.jsonl (appended; reruns resume)")
    s.add_argument(
        "--batch-size", type=positive_int, default=32, help="pairs per forward (default 32)"
    )
    s.add_argument(
        "--retry-errors",
        action="store_true",
        help="score again the rows an earlier run recorded as errors",
    )
    s.add_argument(
        "--regions",
        action="store_true",
        help="region-aware rows (feedback.regions): each word's box and reason, each "
        "phrase's region, each relation's verdict, and the combined score",
    )
    add_detector_args(s)
    s.set_defaults(func=_cmd_score)

    c = sub.add_parser(
        "calibrate",
        help="choose eps for a loop's stop rule on your own labelled generated images",
        description="Calibrate the detector's eps on images from your own generator: the "
        "largest eps at which at most --rate of the images labelled right get a word flagged, "
        "and what it catches on the images labelled wrong. A threshold set on real photos or "
        "on another generator does not transfer.",
    )
    c.add_argument(
        "--data",
        required=True,
        help='labels.jsonl: one {"image", "caption", "right": bool, "wrong_words": [...]} '
        "per line (images relative to the file)",
    )
    c.add_argument(
        "--rate",
        type=float,
        default=0.1,
        help="share of right images allowed a false alarm (default 0.1)",
    )
    c.add_argument("--out", default=None, help="write the calibration as JSON")
    c.add_argument(
        "--verifier",
        default=None,
        metavar="CARD.json",
        help="also fit a verifier (P(image is right) from the detector's outputs, grouped by "
        'each row\'s "group" or else its caption) at the calibrated eps and write its card; '
        "the loop then selects and stops by it (FeedbackPipeline(..., verifier=CARD))",
    )
    c.add_argument(
        "--false-accept",
        type=float,
        default=0.05,
        help="the verifier's stop level lets at most this share of wrong images pass "
        "(default 0.05)",
    )
    c.add_argument(
        "--no-regions",
        dest="regions",
        action="store_false",
        help="fit the verifier on whole-image reports only (default: on region-aware reports, "
        "`feedback.regions`, as the loop judges prompts with two or more objects)",
    )
    add_detector_args(c)
    c.set_defaults(func=_cmd_calibrate)


def _fmt(v) -> str:
    """A table cell: 3 decimals, "-" for a missing or undefined value, text as is."""
    if isinstance(v, str):
        return v
    return "   -  " if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def _cmd_eval(args) -> int:
    from functools import partial

    from ..eval.datasets import load_benchmark
    from ..eval.evaluate import detect_samples, nli_entailment, run_benchmark

    kwargs = {}
    from ..eval.datasets import NO_DATA

    if args.benchmark in NO_DATA:
        kwargs["n"] = args.n
    else:
        if args.images:
            kwargs["images_dir"] = args.images
        if args.prompts and args.benchmark == "richhf":
            kwargs["prompts"] = args.prompts
    samples = load_benchmark(args.benchmark, args.data, **kwargs)[: args.limit]
    if not samples:
        raise InputError(f"{args.data or args.benchmark}: no samples to evaluate")
    det = build_detector(args)
    from ..eval.datasets import CONTENT

    content = CONTENT.get(args.benchmark)

    reports, seconds = detect_samples(det, samples, regions=args.regions)
    result = run_benchmark(
        det,
        samples,
        reports=reports,
        seconds=seconds,
        benchmark=args.benchmark,
        content_word=content,
        picker="random" if args.baseline else "most-negative",
        mode=args.mode,
        ap_positive=args.ap_positive,
        nli=(
            partial(nli_entailment, args.nli_model)
            if args.nli_model and args.benchmark == "seetrue"
            else None
        ),
    )
    m = result.metrics
    print(
        f"{args.benchmark}: {result.n_samples} pairs, {result.seconds:.1f} s "
        f"({result.n_samples / max(result.seconds, 1e-9):.1f} pairs/s)  "
        f"[{', '.join(f'{k}={v}' for k, v in result.settings.items())}]"
    )
    cols = [
        "la",
        "la_content",
        "ap_clipscore",
        "ap_fclipscore",
        "precision",
        "recall",
        "f1",
        "pearson",
        "spearman",
        "nli",
        "false_flags",
    ]
    cols = [c for c in cols if c in m] + ["ap_positive"]
    print(f"{'':>10} " + " ".join(f"{c:>13}" for c in cols))
    rows = [("all", m)] + list(result.per_kind.items()) + list(result.per_objects.items())
    for name, row in rows:
        print(f"{name:>10} " + " ".join(f"{_fmt(row.get(c)):>13}" for c in cols))
    print(
        f"AP positive class: {m['ap_positive']} captions"
        + (" (score negated)" if m["ap_positive"] == "foil" else " (score as is)")
        + (" - the paper's convention" if args.ap_positive is None else " - set by --ap-positive")
    )
    if args.out:
        Path(args.out).write_text(json.dumps(result.to_dict(), indent=2, default=str))
    return 0


def _cmd_score(args) -> int:
    from accelerate import PartialState

    from ..batch import no_rows_message, read_manifest, score_manifest

    rows = read_manifest(args.data)  # a manifest with no valid line fails before the model loads
    if not rows[0]:
        raise InputError(no_rows_message(args.data, rows[1]))
    # torchrun (or `accelerate launch` on GPUs) starts the ranks; PartialState joins them
    # (gloo on CPU). A plain `clip4dm score` is one rank of one.
    cpu = str(args.device) == "cpu"
    state = PartialState(cpu=cpu)
    device = args.device if cpu or state.num_processes == 1 else state.device
    det = build_detector(args, device=str(device))
    summary = score_manifest(
        det,
        args.data,
        args.out,
        batch_size=args.batch_size,
        process_index=state.process_index,
        num_processes=state.num_processes,
        progress=state.is_main_process,
        retry_errors=args.retry_errors,
        wait=state.wait_for_everyone,
        regions=args.regions,
        rows=rows,
    )
    if state.is_main_process:
        import sys

        for problem in summary.problems:
            print(f"clip4dm: warning: skipped {problem}", file=sys.stderr)
    # One JSON line per rank, so a sharded run shows what every rank did.
    print(json.dumps(summary.to_dict()), flush=True)
    return 0


def _cmd_calibrate(args) -> int:
    from ..eval.calibration import calibrate_threshold, load_labelled

    if not 0 <= args.rate < 1:
        raise InputError(f"--rate must lie in [0, 1), got {args.rate}")
    samples = load_labelled(args.data)
    det = build_detector(args)
    reports = det.detect([s.image for s in samples], [s.caption for s in samples], progress=True)
    cal = calibrate_threshold(samples, reports, rate=args.rate)
    n_words = sum(bool(s.foil_spans) for s in samples if s.is_original is False)
    print(
        f"eps = {cal.threshold:.6g}: a word flagged on {100 * cal.false_flag_rate:.1f}% of "
        f"{cal.n_correct} right images; on {cal.n_foils} wrong images, any word flagged on "
        f"{100 * cal.foil_detection:.1f}%"
        + (
            f", the labelled wrong word on {100 * cal.foil_recall:.1f}%"
            if n_words == cal.n_foils and n_words
            else ""
        )
    )
    print(
        f"paper's eps {cal.paper_threshold:g}: flags {100 * cal.paper_false_flag_rate:.1f}% of "
        "right images"
    )
    print(
        f"use it: --threshold {cal.threshold:.6g}, or "
        f"MisalignmentDetector.from_pretrained(..., threshold={cal.threshold:.6g})"
    )
    if args.out:
        Path(args.out).write_text(json.dumps(cal.to_dict(), indent=2))
    if args.verifier:
        _fit_verifier(args, samples, reports, cal.threshold)
    return 0


def _fit_verifier(args, samples, reports, eps: float) -> None:
    """Fit and write the verifier card at the eps the loop will use (--threshold if given,
    else the one just calibrated)."""
    from ..verifier import fit_verifier

    if not 0 < args.false_accept < 1:
        raise InputError(f"--false-accept must lie in (0, 1), got {args.false_accept}")
    rows = [
        json.loads(x) for x in Path(args.data).read_text(encoding="utf-8").splitlines() if x.strip()
    ]
    if args.threshold is None:
        args.threshold = eps
        det = build_detector(args)
        if not args.regions:
            reports = det.detect([s.image for s in samples], [s.caption for s in samples])
    else:
        det = build_detector(args)
    if args.regions:  # what the loop sees: each object judged on its own region
        reports = det.detect_regions(
            [s.image for s in samples], [s.caption for s in samples], progress=True
        )
    groups: dict = {}
    for row, s, rep in zip(rows, samples, reports):
        key = row.get("group", row["caption"])
        groups.setdefault(json.dumps(key), ([], []))
        groups[json.dumps(key)][0].append(rep)
        groups[json.dumps(key)][1].append(bool(s.is_original))
    g_reports = [v[0] for v in groups.values()]
    g_labels = [v[1] for v in groups.values()]
    try:
        ver = fit_verifier(
            g_reports,
            g_labels,
            unit=-det.config.threshold,
            false_accept_rate=args.false_accept,
            detector=args.model,
            threshold=det.config.threshold,
        )
    except ValueError as e:
        raise InputError(f"--verifier: {e}") from None
    ver.save(args.verifier)
    st = ver.stats
    print(
        f"verifier: cross-validated AUC {st['cv_auc']:.3f} (CLIPScore alone "
        f"{st.get('clip_score_auc', float('nan')):.3f}); keeps a right image for "
        f"{100 * st['cv_selection_accuracy']:.1f}% of {st['n_prompts']} prompts (CLIPScore "
        f"{100 * st.get('clip_score_selection_accuracy', float('nan')):.1f}%); stops at "
        f"P >= {ver.stop_level:.3f} ({100 * ver.false_accept_rate:.0f}% of wrong images pass, "
        f"{100 * st['stop_level_right_accepted']:.0f}% of right ones)"
    )
    eps = det.config.threshold
    if "region_score_auc" in st:
        print(
            f"region score alone: AUC {st['region_score_auc']:.3f}, keeps a right image for "
            f"{100 * st['region_score_selection_accuracy']:.1f}% of prompts"
        )
    print(
        f"selects by {ver.select_by} (what kept more right images above); card: {args.verifier} "
        f"(eps {eps:.6g})"
    )
