"""Selection and stopping by a fitted verifier vs best-of-N by CLIPScore, on held-out prompts.

    python -m shapesworld.build.label_loop_pool --output-dir runs/calibration --prompts 200
    clip4dm calibrate --data runs/calibration/labels.jsonl --verifier runs/verifier.json
    python benchmarks/verifier_selection.py --verifier runs/verifier.json --n 300 --json v.json

The shipped `shapes-sd-tiny` makes 8 images of each of the 300 held-out prompts (150 one-, 150
two-object; the loop benchmark's prompts, image k of prompt i seeded 1000 i + k, as the loop
seeds them), the loop's detector (at the verifier card's eps) scores them and the pixel oracle
judges them; each row then picks from the same images, as the loop would:

- best-of-N by CLIPScore (the detector's CLIP), by F-CLIPScore (ties by CLIPScore; today's
  default), by the verifier's P(right) -- the loop's `best_of_n` with and without a card;
- resample: images one at a time until the stop rule holds (the detector flags nothing, or
  P(right) reaches the card's stop level), keeping the best so far -- the loop's `resample`;
- the ceiling: any of the N images right.

Budgets 4 (first 4 images) and 8. Whole-prompt satisfaction in %, and a paired bootstrap 95%
interval of each row's difference to best-of-N by CLIPScore, per prompt kind. Also the
verifier's AUC right-vs-wrong on the generated two-object images (vs CLIPScore's). Generated
scores are cached in `--cache` (JSONL, one prompt per line, resumable).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from results_io import add_results_argument, save_result, tables_from
from tqdm.auto import tqdm

from feedback import MisalignmentDetector, Verifier
from feedback.detector import reports_from_output
from feedback.report import MisalignmentReport, WordScore
from generation.selection import best_index
from shapesworld.pipelines import (
    LOOP_DETECTOR,
    judge_tensor,
    load_pipeline,
    loop_verifier_path,
    prompt_set,
)


def _report(d: dict) -> MisalignmentReport:
    words = [WordScore(**w) for w in d["words"]]
    keys = ("caption", "cosine", "clip_score", "sum_negative_attribution", "f_clip_score")
    return MisalignmentReport(**{k: d[k] for k in keys}, words=words)


def make_pool(pipe, det, prompts, n_images, cache: Path, steps=20, guidance=4.0, base_det=None):
    """Per prompt: n_images reports (dicts) and oracle verdicts, and each image's cosine with
    the prompt under `base_det` (another CLIP, for its best-of-N row); cached line by line."""
    done = {}
    if cache.is_file():
        for line in cache.read_text().splitlines():
            try:
                row = json.loads(line)
                done[row["i"]] = row
            except (json.JSONDecodeError, KeyError):
                continue
    with open(cache, "a") as f:
        for i, p in enumerate(tqdm(prompts, desc="generate + score")):
            if i in done and len(done[i]["right"]) >= n_images:
                continue
            gens = [torch.Generator().manual_seed(1000 * i + k) for k in range(n_images)]
            with torch.no_grad():
                imgs = pipe(
                    p.text,
                    num_images_per_prompt=n_images,
                    generator=gens,
                    num_inference_steps=steps,
                    guidance_scale=guidance,
                    output_type="pt",
                ).images
            reps = reports_from_output(det.score(imgs, [p.text] * n_images))
            right = [bool(judge_tensor(im, p.text).all_correct) for im in imgs]
            row = {"i": i, "n_objects": p.n_objects, "reports": [r.to_dict() for r in reps]}
            row["right"] = right
            if base_det is not None:
                row["baseline_cosine"] = base_det.cosine(imgs, [p.text])[:, 0].tolist()
            f.write(json.dumps(row) + "\n")
            f.flush()
            done[i] = row
    return [done[i] for i in range(len(prompts))]


def pick_rows(
    reps, right, ver: Verifier, n: int, used: dict, baseline: tuple[str, list] | None = None
) -> dict[str, bool]:
    """Whether each selection rule keeps a right image among the first n (`used`: images
    each early-stopping rule made, appended per prompt; `baseline`: another CLIP's name and
    its cosines of these images, for best-of-n by that CLIP's CLIPScore)."""
    reps, right = reps[:n], right[:n]
    clip = [r.clip_score for r in reps]

    def first_max(keys):
        return max(range(len(keys)), key=lambda j: (keys[j], -j))

    probs = ver.probabilities(reps)
    out = {
        "single sample": right[0],
        f"best-of-{n} by CLIPScore": right[first_max(clip)],
        f"best-of-{n} by F-CLIPScore (no card)": right[best_index(reps)],  # the loop's rule
        f"best-of-{n} by the verifier card ({ver.select_by})": right[ver.select(reps, probs)],
        f"any of {n} right (ceiling)": any(right),
    }
    if baseline is not None:
        name, cos = baseline
        out[f"best-of-{n} by CLIPScore of {name}"] = right[first_max(cos[:n])]
    # resample, detector's rule: stop at the first image with nothing flagged
    kept = None
    for k in range(n):
        if not reps[k].misaligned_words:
            kept = k
            break
    used.setdefault("resample, stop when nothing flagged (no card)", []).append(
        n if kept is None else kept + 1
    )
    kept = best_index(reps if kept is None else reps[: kept + 1])
    out["resample, stop when nothing flagged (no card)"] = right[kept]
    # resample, verifier's rule: stop once the best P so far reaches the stop level
    kept = None
    for k in range(1, n + 1):
        p = ver.probabilities(reps[:k])
        j = ver.select(reps[:k], p)
        if p[j] >= ver.stop_level:
            kept = j
            used.setdefault("resample, stop by the verifier", []).append(k)
            break
    if kept is None:
        used.setdefault("resample, stop by the verifier", []).append(n)
        kept = ver.select(reps, probs)
    out["resample, stop by the verifier"] = right[kept]
    return out


def bootstrap(a, b, n=2000, seed=0):
    rng = np.random.default_rng(seed)
    d = a.astype(float) - b.astype(float)
    idx = rng.integers(0, len(d), (n, len(d)))
    m = d[idx].mean(1)
    return 100 * d.mean(), 100 * np.percentile(m, 2.5), 100 * np.percentile(m, 97.5)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--verifier",
        default=str(loop_verifier_path() or ""),
        help="verifier card (clip4dm calibrate; default: the shipped pipeline's)",
    )
    p.add_argument("--detector", default=LOOP_DETECTOR)
    p.add_argument(
        "--baseline-detector",
        default="shapes-tiny-gen",
        help="another CLIP whose best-of-N by CLIPScore gets a row ('' = none; default: the "
        "loop's detector before shapes-tiny-gen2)",
    )
    p.add_argument("--n", type=int, default=300, help="held-out prompts (half per kind)")
    p.add_argument("--images", type=int, default=8, help="images per prompt (largest budget)")
    p.add_argument("--cache", default="runs/verifier_pool.jsonl")
    p.add_argument("--json", default=None)
    p.add_argument("--threads", type=int, default=2)
    add_results_argument(p)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    ver = Verifier.load(args.verifier)
    det = MisalignmentDetector.from_pretrained(args.detector, threshold=ver.threshold)
    print(f"detector {args.detector} at eps {det.config.threshold:.6g} (the card's)")
    prompts = prompt_set(args.n)
    cache = Path(args.cache)
    cache.parent.mkdir(parents=True, exist_ok=True)
    base_det = None
    if args.baseline_detector and args.baseline_detector != args.detector:
        base_det = MisalignmentDetector.from_pretrained(args.baseline_detector)
    pool = make_pool(load_pipeline(), det, prompts, args.images, cache, base_det=base_det)
    n_obj = np.array([row["n_objects"] for row in pool])
    results: dict = {}
    shown: list[dict] = []
    for budget in sorted({4, args.images}):
        rows: dict[str, list[bool]] = {}
        used: dict[str, list[int]] = {}
        for row in pool:
            reps = [_report(d) for d in row["reports"]]
            base = None
            if base_det is not None and "baseline_cosine" in row:
                base = (args.baseline_detector, row["baseline_cosine"])
            for k, v in pick_rows(reps, row["right"], ver, budget, used, base).items():
                rows.setdefault(k, []).append(v)
        base = np.array(rows[f"best-of-{budget} by CLIPScore"])
        table = {}
        print(
            f"\n| selection (budget {budget}) | 2-object | 1-object | 2-object vs best-of-"
            f"{budget} by CLIPScore (95% CI) | 1-object vs it |"
        )
        print("|---|---|---|---|---|")
        for name, vals in rows.items():
            v = np.array(vals)
            two, one = v[n_obj == 2], v[n_obj == 1]
            d2 = bootstrap(two, base[n_obj == 2])
            d1 = bootstrap(one, base[n_obj == 1])
            table[name] = {
                "two": 100 * two.mean(),
                "one": 100 * one.mean(),
                "diff_two": d2,
                "diff_one": d1,
            }
            print(
                f"| {name} | {100 * two.mean():.1f} | {100 * one.mean():.1f} | "
                f"{d2[0]:+.1f} [{d2[1]:+.1f}, {d2[2]:+.1f}] | {d1[0]:+.1f} |"
            )
        for name, ns in used.items():
            ns = np.array(ns)
            table[name]["images_two"] = float(ns[n_obj == 2].mean())
            table[name]["images_one"] = float(ns[n_obj == 1].mean())
            print(
                f"{name}: {ns[n_obj == 2].mean():.2f} images per two-object prompt, "
                f"{ns[n_obj == 1].mean():.2f} per one-object prompt (budget {budget})"
            )
        results[f"budget_{budget}"] = table
        head = [
            f"budget {budget}",
            "2-object",
            "1-object",
            f"2-object vs best-of-{budget} by CLIPScore (95% CI)",
            "1-object vs it",
        ]
        cells = []
        for name, r in table.items():
            d2, d1 = r["diff_two"], r["diff_one"]
            if "images_two" in r:
                name += f" ({r['images_two']:.2f} / {r['images_one']:.2f} images)"
            cells.append(
                [
                    name,
                    f"{r['two']:.1f}",
                    f"{r['one']:.1f}",
                    f"{d2[0]:+.1f} [{d2[1]:+.1f}, {d2[2]:+.1f}]",
                    f"{d1[0]:+.1f}",
                ]
            )
        shown.append(tables_from(head, cells, f"Budget {budget}"))
    # AUC on generated two-object images (every image, its own prompt's group of all images)
    from sklearn.metrics import roc_auc_score

    ys, pv, pc = [], [], []
    for row in pool:
        if row["n_objects"] != 2:
            continue
        reps = [_report(d) for d in row["reports"]]
        ys += row["right"]
        pv += ver.probabilities(reps)
        pc += [r.clip_score for r in reps]
    auc_v, auc_c = roc_auc_score(ys, pv), roc_auc_score(ys, pc)
    print(
        f"\nAUC right vs wrong, generated two-object images ({len(ys)}, {sum(ys)} right): "
        f"verifier {auc_v:.3f}, CLIPScore {auc_c:.3f}"
    )
    results["auc_two_object"] = {"verifier": auc_v, "clip_score": auc_c, "n": len(ys)}
    results["card"] = {"path": args.verifier, "stop_level": ver.stop_level, **ver.stats}
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    save_result(
        args.results,
        results,
        kind="verifier_selection",
        page="loop",
        title="Selection and stopping by the verifier card",
        tables=shown,
    )


if __name__ == "__main__":
    main()
