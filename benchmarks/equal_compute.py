"""Search at equal compute: success rate vs denoiser steps per prompt for best-of-N (ranked by
CLIPScore and by the region score), few-step previews (`strategy="preview"`) and early
rejection inside one run (`strategy="early_reject"`), judged by the ShapesWorld oracle on
held-out prompts. Writes a JSON (rows as they finish; `--resume` skips them) and a curve PNG.

    python benchmarks/equal_compute.py [--n 300] [--max-n 8] \
        [--preview 40 80 120 160] [--early 80 120] [--json runs/equal_compute.json] \
        [--png docs/images/equal_compute.png]

Prompt i uses seeds 1000 i, 1000 i + 1, ... in every row (best-of-k takes the first k of
`--max-n` plain samples at 20 steps), so every row starts from the same candidates. Each row
also counts the denoiser's evaluations per prompt (a forward hook on the UNet: image
evaluations, classifier-free guidance's doubled batch included) beside the steps.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
import torch
from loop_faithfulness import bootstrap_diff, count_evals
from results_io import add_results_argument, save_result
from tqdm.auto import tqdm

from feedback import MisalignmentDetector, Verifier
from generation import EarlyReject, FeedbackPipeline, LoopConfig
from generation.selection import best_index
from shapesworld.pipelines import (
    LOOP_DETECTOR,
    SAMPLING,
    STEPS,
    judge_tensor,
    load_pipeline,
    loop_threshold,
    loop_verifier_path,
    prompt_set,
)

GEN = dict(SAMPLING, output_type="pt")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=300, help="prompts (half one-, half two-object)")
    p.add_argument("--max-n", type=int, default=8, help="plain samples per prompt (best-of-k)")
    p.add_argument("--preview", type=int, nargs="*", default=[40, 80, 120, 160])
    p.add_argument("--early", type=int, nargs="*", default=[80, 120])
    p.add_argument(
        "--early-at",
        type=int,
        nargs="*",
        default=None,
        help="early rejection reads each candidate after these steps (default: a fifth)",
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default="runs/equal_compute.json")
    p.add_argument("--png", default=None, help="the curve (default: beside --json)")
    p.add_argument("--resume", action="store_true", help="keep rows already in --json")
    add_results_argument(p)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    pipe = load_pipeline()
    eps = loop_threshold(detector=LOOP_DETECTOR)
    det = MisalignmentDetector.from_pretrained(LOOP_DETECTOR, threshold=eps)
    ver = Verifier.load(loop_verifier_path())
    prompts = prompt_set(args.n)
    n_obj = np.array([q.n_objects for q in prompts])
    out = {"n": args.n, "steps": STEPS, "rows": {}}
    if args.resume and os.path.exists(args.json):
        with open(args.json) as f:
            out = json.load(f)
    rows = out["rows"]

    def save():
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)

    # best-of-k from the same plain samples, k = 1..max_n
    if "best-of-1 by CLIPScore" not in rows:
        fb = FeedbackPipeline(
            pipe, det, LoopConfig(strategy="best_of_n", max_images=args.max_n), verifier=None
        )
        ok_clip = np.zeros((args.n, args.max_n), bool)
        ok_reg = np.zeros((args.n, args.max_n), bool)
        evals = [0]
        with count_evals(pipe.unet, evals):
            for i, q in enumerate(tqdm(prompts, desc=f"{args.max_n} plain samples")):
                fb.config.seed = 1000 * i
                rec = fb(q.text, **GEN).history[0].rounds[0]
                ok = [judge_tensor(im, q.text).all_correct for im in rec.images]
                for k in range(1, args.max_n + 1):
                    reps = rec.reports[:k]
                    ci = max(range(k), key=lambda j: (reps[j].clip_score, -j))
                    ok_clip[i, k - 1] = ok[ci]
                    ok_reg[i, k - 1] = ok[best_index(reps)]
        per_image = evals[0] / (args.n * args.max_n)
        for k in range(1, args.max_n + 1):
            for name, ok in (("CLIPScore", ok_clip), ("region score", ok_reg)):
                rows[f"best-of-{k} by {name}"] = {
                    "family": f"best-of-N by {name}",
                    "steps": k * STEPS,
                    "evals": k * per_image,
                    "ok": ok[:, k - 1].astype(int).tolist(),
                }
        save()

    def loop_row(name, family, cfg):
        if name in rows:
            return
        fb = FeedbackPipeline(pipe, det, cfg, verifier=ver)
        ok, spent, evals = [], [], [0]
        with count_evals(pipe.unet, evals):
            for i, q in enumerate(tqdm(prompts, desc=name)):
                fb.config.seed = 1000 * i
                h = fb(q.text, **GEN).history[0]
                r, j = h.best
                ok.append(judge_tensor(h.rounds[r].images[j], q.text).all_correct)
                spent.append(h.num_steps)
        rows[name] = {
            "family": family,
            "steps": float(np.mean(spent)),
            "evals": evals[0] / args.n,
            "ok": [int(v) for v in ok],
        }
        save()

    for b in args.preview:
        loop_row(
            f"preview, {b} steps",
            "preview",
            LoopConfig(strategy="preview", max_steps=b, max_images=max(1, b // STEPS)),
        )
    for b in args.early:
        for at in args.early_at or [None]:
            read = "" if at is None else f" (read at step {at})"
            loop_row(
                f"early rejection{read}, {b} steps",
                f"early rejection{read}",
                LoopConfig(strategy=EarlyReject(at=at), max_steps=b, max_images=max(1, b // STEPS)),
            )

    base = np.array(rows["best-of-4 by CLIPScore"]["ok"], bool)
    two, one = n_obj == 2, n_obj == 1
    print(f"\nSearch at equal compute: {args.n} held-out prompts, {STEPS} full steps\n")
    print(
        "| row | steps per prompt | denoiser evals per prompt | 2-object | 1-object "
        "| 2-object vs best-of-4 by CLIPScore (95% CI) |\n|---|---|---|---|---|---|"
    )
    for name, row in rows.items():
        ok = np.array(row["ok"], bool)
        d, lo, hi = bootstrap_diff(ok[two], base[two])
        row.update(
            two_object=float(ok[two].mean()),
            one_object=float(ok[one].mean()),
            diff_two_vs_bon4_clip=[d, lo, hi],
        )
        print(
            f"| {name} | {row['steps']:.0f} | {row['evals']:.0f} | {100 * ok[two].mean():.1f} | "
            f"{100 * ok[one].mean():.1f} | {d:+.1f} [{lo:+.1f}, {hi:+.1f}] |"
        )
    save()
    save_result(
        args.results,
        out,
        kind="equal_compute",
        page="loop",
        title="Search at equal compute: success against denoiser steps",
    )
    png = args.png or os.path.splitext(args.json)[0] + ".png"
    plot(rows, png)
    print(f"\ncurve: {png}")


def plot(rows: dict, path: str) -> None:
    """Two-object success rate vs steps per prompt, one line per search family."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fams: dict[str, list] = {}
    for row in rows.values():
        fams.setdefault(row["family"], []).append((row["steps"], 100 * row["two_object"]))
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for fam, pts in fams.items():
        pts.sort()
        ax.plot(*zip(*pts), marker="o", label=fam)
    ax.set_xlabel("denoiser steps per prompt")
    ax.set_ylabel("two-object prompts right (%)")
    ax.set_title("Search at equal compute (ShapesWorld oracle)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    main()
