"""What region-aware scoring costs against whole-image scoring, and the feedback's share of a
loop round, measured in one process (ratios; a noisy machine cancels out).

    python benchmarks/region_speed.py [--models shapes-tiny-gen2 ViT-B-32] [--batches 1 8]

1. Per CLIP (a shipped one by name, or an open_clip architecture with random weights at its
   real shape: the shape, not the weights, sets the cost) and batch: seconds per image of
   `MisalignmentDetector.score` (whole-image CLIP4DM attribution) and of `score_regions` on a
   two-object prompt (split-line proposals: every region isolated and encoded once, each
   phrase attributed on its own region; the whole-image pass included), and their ratio.
2. One loop round of the shipped `shapes-sd-tiny` (best_of_n, 4 images, 20 steps, the loop's
   default detector and card), and the share of its time spent in feedback.
Goals (issue 28): region scoring <= 5x the whole-image attribution per two-object image;
feedback <= 10% of a shapes-sd-tiny round.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from results_io import add_results_argument, save_result

PROMPT = "a small red circle to the left of a large blue square"


def _best(fn, repeat: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def _detector(name: str):
    from feedback import DetectorConfig, MisalignmentDetector, OpenClipBackend
    from feedback.registry import shipped_models

    if name in shipped_models():
        return MisalignmentDetector.from_pretrained(name)
    import open_clip

    model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=None)
    backend = OpenClipBackend(model.eval(), preprocess, open_clip.get_tokenizer(name), name=name)
    return MisalignmentDetector(backend, DetectorConfig())


def detector_rows(models, batches, repeat):
    rows = []
    for name in models:
        det = _detector(name)
        size = det.backend.pixel_transform().crop
        for b in batches:
            x = torch.rand(b, 3, *size)
            caps = [PROMPT] * b
            tw = _best(lambda d=det, x=x, c=caps: d.score(x, c), repeat)
            tr = _best(lambda d=det, x=x, c=caps: d.score_regions(x, c), repeat)
            rows.append(
                {
                    "model": name,
                    "batch": b,
                    "px": list(size),
                    "whole_s_per_image": tw / b,
                    "regions_s_per_image": tr / b,
                    "regions_over_whole": tr / tw,
                }
            )
            print(
                f"| {name} | {size[0]} | {b} | {1000 * tw / b:.1f} | {1000 * tr / b:.1f} | "
                f"{tr / tw:.2f}x |",
                flush=True,
            )
    return rows


def loop_share(repeat: int) -> dict:
    from feedback import MisalignmentDetector
    from generation import FeedbackPipeline, LoopConfig
    from shapesworld.pipelines import LOOP_DETECTOR, SAMPLING, load_pipeline

    pipe = load_pipeline()
    det = MisalignmentDetector.from_pretrained(LOOP_DETECTOR)
    fb = FeedbackPipeline(pipe, det, LoopConfig(strategy="best_of_n", max_images=4))
    d = fb.detector
    clock = {"feedback": 0.0, "depth": 0}

    def timing(fn):
        def run(*a, **k):  # region scoring calls score inside: count the outer call once
            t = time.perf_counter()
            clock["depth"] += 1
            try:
                return fn(*a, **k)
            finally:
                clock["depth"] -= 1
                if clock["depth"] == 0:
                    clock["feedback"] += time.perf_counter() - t

        return run

    d.score, d.score_regions = timing(d.score), timing(d.score_regions)
    kw = dict(SAMPLING, output_type="pt")
    fb(PROMPT, **kw)  # warm-up
    shares, totals = [], []
    for _ in range(repeat):
        clock["feedback"] = 0.0
        t = time.perf_counter()
        fb(PROMPT, **kw)
        total = time.perf_counter() - t
        shares.append(clock["feedback"] / total)
        totals.append(total)
    i = min(range(repeat), key=lambda k: totals[k])
    print(
        f"\nshapes-sd-tiny round (best_of_n, 4 images, 20 steps, regions on, the shipped card): "
        f"{totals[i]:.2f} s, feedback {100 * shares[i]:.1f}% of it (fastest of {repeat})"
    )
    return {"round_s": totals[i], "feedback_share": shares[i]}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["shapes-tiny-gen2", "ViT-B-32"])
    p.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None)
    add_results_argument(p)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, CPU, {args.threads} threads, {time.strftime('%Y-%m-%d')}")
    print(f"two-object prompt: {PROMPT!r}\n")
    print("| CLIP | px | batch | whole-image ms/img | regions ms/img | regions / whole |")
    print("|---|---|---|---|---|---|")
    out = {"detector": detector_rows(args.models, args.batches, args.repeat)}
    out["loop"] = loop_share(args.repeat)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    save_result(args.results, out, kind="region_speed", page="speed", title="What regions cost")


if __name__ == "__main__":
    main()
