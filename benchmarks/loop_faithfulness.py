"""Does the feedback loop make images that satisfy their prompts? Judged by the ShapesWorld
oracle on held-out prompts, every strategy at the same image budget per prompt.

    python benchmarks/loop_faithfulness.py [--n 300] [--budget 4] [--ae-n 60] \
        [--detector shapes-tiny-gen2] [--verifier auto|none|CARD] [--json out.json]

Strategies (shipped `shapes-sd-tiny`, the loop's detector at the eps the pipeline's card
calibrated for it on generated images; prompt i uses seeds 1000 i, 1000 i + 1, ... so every
strategy starts from the same first image): single sample; best-of-N by CLIPScore (what people
do today), by F-CLIPScore (the rule without a card) and by the verifier card; resample with
the card's stop rule; the re-weighting loop and per-phrase guidance, with the card's fix gate
(a fix only where the card measured it beating a fresh sample, `generation.fixes`) and with
the fix every round; each fix after 2 plain samples; automatic Attend-and-Excite (first
--ae-n prompts, it is slow); and as ceilings the same loops driven by the oracle's own word
verdicts (no card: the oracle's verdict is the stop), and "any of the N plain samples is
right". `--verifier none` runs the loops as they run without a card (F-CLIPScore selection,
stop when nothing is flagged). Reports whole-prompt satisfaction per prompt kind with a paired
bootstrap 95% interval against best-of-N by CLIPScore (the same CLIP), word-kind accuracy, the
verifier's AUC right-vs-wrong and selection accuracy on the plain two-object samples, the
detector's false alarms and recall per word kind on the plain samples, and the share of loop
time spent on feedback.
"""

from __future__ import annotations

import argparse
import json
import time
from contextlib import contextmanager

import numpy as np
import torch
from results_io import add_results_argument, save_result
from tqdm.auto import tqdm

from feedback import (
    MisalignmentDetector,
    f_clip_score,
    select_misaligned,
    sum_negative_attribution,
)
from feedback.detector import reports_from_output
from generation import FeedbackPipeline, LoopConfig
from generation.fixes import fix_gains
from generation.selection import best_index
from shapesworld.pipelines import (
    LOOP_DETECTOR,
    SAMPLING,
    judge_tensor,
    load_pipeline,
    loop_threshold,
    loop_verifier_path,
    prompt_set,
    word_kind_accuracy,
)

GEN = dict(SAMPLING, output_type="pt")


class OracleDetector(MisalignmentDetector):
    """The detector's scores with the oracle's word verdicts as the misaligned mask (the
    ceiling a perfect detector would give the same loop)."""

    def score(self, images, captions, *, nan_policy="raise"):
        out = super().score(images, captions, nan_policy=nan_policy)
        for b, prompt in enumerate(captions):
            verdicts = judge_tensor(images[b], prompt).words
            for i, v in enumerate(verdicts[: out.misaligned.shape[1]]):
                wrong = v.correct is False
                out.misaligned[b, i] = wrong
                out.word_scores[b, i] = -1.0 if wrong else 0.0
        neg = (out.word_scores * out.misaligned).sum(dim=1)
        out.sum_negative_attribution = neg
        out.f_clip_score = neg * (1 - out.clip_score / 2.5)
        return out


class Clock:
    """Seconds spent in the detector vs the generator during loop runs."""

    def __init__(self):
        self.feedback = 0.0
        self.generation = 0.0

    def wrap(self, fb: FeedbackPipeline) -> FeedbackPipeline:
        gen = fb.adapter.generate
        depth = [0]  # region scoring calls the detector's score inside: count it once

        def timed(fn):
            def run(*a, **k):
                t = time.perf_counter()
                depth[0] += 1
                try:
                    return fn(*a, **k)
                finally:
                    depth[0] -= 1
                    if depth[0] == 0:
                        self.feedback += time.perf_counter() - t

            return run

        def timed_gen(*a, **k):
            t = time.perf_counter()
            try:
                return gen(*a, **k)
            finally:
                self.generation += time.perf_counter() - t

        fb.detector.score = timed(fb.detector.score)
        fb.detector.score_regions = timed(fb.detector.score_regions)
        fb.adapter.generate = timed_gen
        return fb


@contextmanager
def count_evals(module: torch.nn.Module, into: list):
    """Within the block, `into[0]` grows by the batch size of every forward of `module`."""

    def hook(mod, args, kwargs):
        x = args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))
        into[0] += int(x.shape[0])

    handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield into
    finally:
        handle.remove()


def kept_right(h) -> tuple[bool, object]:
    r, k = h.best
    j = judge_tensor(h.rounds[r].images[k], h.prompt)
    return j.all_correct, j


def most_negative_is_wrong(report, judgement) -> bool:
    """The report's most negative content word (a word the oracle judges) is a wrong one."""
    scored = [
        (w.score, i)
        for i, (w, v) in enumerate(zip(report.words, judgement.words))
        if w.score is not None and v.correct is not None
    ]
    return bool(scored) and min(scored)[1] in judgement.wrong_words


def box_holds_object(report, judgement) -> bool | None:
    """For a region report whose most negative word is a wrong attribute of an object the
    oracle found: whether the word's box holds that object's centre (None otherwise)."""
    scored = [(w.score, i) for i, w in enumerate(report.words) if w.score is not None]
    if not scored or not getattr(report, "regional", False):
        return None
    i = min(scored)[1]
    w = report.words[i]
    if i not in judgement.wrong_words or w.reason != "attribute" or w.phrase is None:
        return None
    if w.phrase >= len(judgement.assignment) or judgement.assignment[w.phrase] is None:
        return None
    o = judgement.objects[judgement.assignment[w.phrase]]
    x0, y0, x1, y1 = w.box
    return x0 <= o.cx <= x1 and y0 <= o.cy <= y1


def bootstrap_diff(a: np.ndarray, b: np.ndarray, n: int = 2000, seed: int = 0):
    """Mean of a - b (paired) and its 95% percentile interval, in points."""
    rng = np.random.default_rng(seed)
    d = a.astype(float) - b.astype(float)
    idx = rng.integers(0, len(d), size=(n, len(d)))
    boots = d[idx].mean(axis=1)
    return 100 * d.mean(), 100 * np.percentile(boots, 2.5), 100 * np.percentile(boots, 97.5)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=300, help="prompts (half one-, half two-object)")
    p.add_argument("--budget", type=int, default=4, help="images per prompt")
    p.add_argument("--ae-n", type=int, default=60, help="prompts for Attend-and-Excite")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--detector", default=LOOP_DETECTOR, help=f"shipped detector name or path ({LOOP_DETECTOR})"
    )
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="detector eps (default: the pipeline card's eps calibrated on generated images)",
    )
    p.add_argument(
        "--verifier",
        default="auto",
        help="verifier card for selection, stop and fix gate: auto (the pipeline's shipped "
        "card), none, or a path",
    )
    p.add_argument("--only", nargs="+", default=None, help="run only loops whose name has one")
    p.add_argument("--skip", nargs="+", default=None, help="skip loops whose name has one")
    p.add_argument(
        "--ae-no-stop", action="store_true", help="Attend-and-Excite uses the whole budget"
    )
    p.add_argument(
        "--plain-only", action="store_true", help="only the best-of-N rows (plain samples)"
    )
    p.add_argument(
        "--no-regions",
        action="store_true",
        help="every loop judges on the whole image (LoopConfig(regions=False)): the rows as "
        "they were before region-aware scoring",
    )
    p.add_argument("--json", default=None)
    add_results_argument(p)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    pipe = load_pipeline()
    card = MisalignmentDetector.from_pretrained(args.detector).config.threshold
    cal = loop_threshold(detector=args.detector)
    eps = args.threshold if args.threshold is not None else (cal or card)
    det = MisalignmentDetector.from_pretrained(args.detector, threshold=eps)
    print(f"detector {args.detector}, eps {eps:.5f} (detector card's eps {card:.5f})")
    from feedback import Verifier

    ver_path = loop_verifier_path() if args.verifier == "auto" else args.verifier
    ver = None if ver_path in (None, "none") else Verifier.load(ver_path)
    if ver is not None:
        print(
            f"verifier card {ver_path} (selects by {ver.select_by}, stop P >= "
            f"{ver.stop_level:.3f}, fix gains for {sorted(fix_gains(ver)) or 'no fix'})"
        )
    oracle_det = OracleDetector(det.backend, det.config)
    prompts = prompt_set(args.n)
    n_obj = np.array([p.n_objects for p in prompts])
    N = args.budget

    results: dict[str, np.ndarray] = {}
    steps: dict[str, float] = {}  # mean denoiser steps per prompt of each loop
    # mean denoiser image-evaluations per prompt, measured by a forward hook: CFG's doubled
    # batch, Attend-and-Excite's extra gradient passes and refinement iterations included
    evals: dict[str, float] = {}
    judgements: dict[str, list] = {}
    clocks: dict[str, Clock] = {}

    # Plain samples once: single, best-of-N by CLIPScore / F-CLIPScore, any-right ceiling.
    plain = FeedbackPipeline(
        pipe,
        det,
        LoopConfig(strategy="best_of_n", max_images=N, regions=not args.no_regions),
        verifier=ver,
    )
    keys = (
        "single",
        "bon_clip",
        "bon_fclip_whole",
        "bon_fclip",
        "bon_fclip_card",
        "bon_verifier",
        "any",
    )
    rows = {k: [] for k in keys if ver is not None or k != "bon_verifier"}
    p_two, clip_two, right_two = [], [], []  # plain two-object samples, for the AUC
    reg_two = []
    which_word = {"whole": [], "regions": [], "box_holds_object": []}
    jrows = {k: [] for k in ("single", "bon_clip", "bon_fclip")}
    only_plain = args.plain_only
    flagged = flagged_wrong = wrong_total = wrong_caught = 0
    per_kind: dict[str, list[int]] = {}  # kind -> [right, right flagged, wrong, wrong flagged]
    for i, pr in enumerate(tqdm(prompts, desc="plain samples")):
        plain.config.seed = 1000 * i
        h = plain(pr.text, **GEN).history[0]
        rec = h.rounds[0]
        js = [judge_tensor(im, pr.text) for im in rec.images]
        ok = [j.all_correct for j in js]
        ci = max(range(N), key=lambda k: (rec.reports[k].clip_score, -k))
        fi = best_index(rec.reports)  # the rule without a card (region-aware by default)
        whole = reports_from_output(det.score(rec.images, [pr.text] * N))
        wi = best_index(whole)  # the rule without a card before region scoring
        if ver is not None:
            rows["bon_verifier"].append(ok[h.best[1]])
            if pr.n_objects == 2:
                p_two += list(rec.p_right)
        if pr.n_objects == 2:
            clip_two += [r.clip_score for r in rec.reports]
            right_two += ok

        def f_at(rep, e=card):  # F-CLIPScore had the detector used the card's eps
            scores = [w.score for w in rep.words]
            chosen = select_misaligned(scores, threshold=e)
            f = f_clip_score(sum_negative_attribution(scores, chosen), rep.clip_score)
            return (f, rep.clip_score)

        gi = max(range(N), key=lambda k: (f_at(rec.reports[k]), -k))
        rows["bon_fclip_card"].append(ok[gi])
        rows["single"].append(ok[0])
        rows["bon_clip"].append(ok[ci])
        rows["bon_fclip"].append(ok[fi])
        rows["bon_fclip_whole"].append(ok[wi])
        if pr.n_objects == 2:
            reg_two += [r.score if getattr(r, "regional", False) else r.cosine for r in rec.reports]
            for rep_w, rep_r, j in zip(whole, rec.reports, js):
                if not j.all_correct and j.wrong_words:
                    which_word["whole"].append(most_negative_is_wrong(rep_w, j))
                    which_word["regions"].append(most_negative_is_wrong(rep_r, j))
                    held = box_holds_object(rep_r, j)
                    if held is not None:
                        which_word["box_holds_object"].append(held)
        rows["any"].append(any(ok))
        jrows["single"].append(js[0])
        jrows["bon_clip"].append(js[ci])
        jrows["bon_fclip"].append(js[fi])
        for rep, j in zip(rec.reports, js):
            for w, v in zip(rep.words, j.words):
                if v.kind is None:
                    continue
                wrong = v.correct is False
                flagged += w.misaligned
                flagged_wrong += w.misaligned and wrong
                wrong_total += wrong
                wrong_caught += w.misaligned and wrong
                c = per_kind.setdefault(v.kind, [0, 0, 0, 0])
                c[2 * wrong] += 1
                c[2 * wrong + 1] += bool(w.misaligned)
    for k, v in rows.items():
        results[k] = np.array(v)
    judgements.update(jrows)

    def loop_cfg(strategy, **kw):
        kw.setdefault("regions", not args.no_regions)
        kw.setdefault("max_images", N)
        return LoopConfig(strategy=strategy, max_rounds=N, **kw)

    stop = "stop by the verifier" if ver is not None else "stop when nothing flagged"
    every = ", fix every round" if fix_gains(ver) else ""
    gated = " (fix where the card measured a gain)" if every else ""
    loops = {
        f"resample, {stop}": (det, loop_cfg("resample")),
        f"reweight{gated}": (det, loop_cfg("reweight")),
        f"phrase guidance{gated}": (det, loop_cfg("phrase_guidance")),
        f"2 samples + reweight{gated}": (det, loop_cfg("reweight", samples_per_round=2)),
        f"2 samples + phrase guidance{gated}": (
            det,
            loop_cfg("phrase_guidance", samples_per_round=2),
        ),
        # the wrong object's box regenerated (inpainting over the same modules)
        f"region fix{gated}": (det, loop_cfg("region_fix")),
        # search at equal compute: few-step previews of many seeds, the best finished
        f"preview at best-of-{N}'s compute ({N * 20} steps)": (
            det,
            loop_cfg("preview", max_steps=N * 20),
        ),
        f"early rejection at best-of-{N}'s compute ({N * 20} steps)": (
            det,
            loop_cfg("early_reject", max_steps=N * 20),
        ),
        f"preview at 65% of best-of-{2 * N}'s compute ({int(0.65 * 2 * N * 20)} steps)": (
            det,
            loop_cfg("preview", max_steps=int(0.65 * 2 * N * 20), max_images=2 * N),
        ),
        # Without the stop rule every prompt gets the whole budget: what the loop adds when a
        # weak detector's "nothing is misaligned" is not trusted.
        "reweight, no early stop": (det, loop_cfg("reweight", stop_when_aligned=False)),
        "phrase guidance, no early stop": (
            det,
            loop_cfg("phrase_guidance", stop_when_aligned=False),
        ),
        # the oracle's verdicts drive the fix and the stop: no card (its features would be
        # computed from the oracle's fake scores)
        "oracle-driven reweight": (oracle_det, loop_cfg("reweight", regions=False)),
        "oracle-driven phrase guidance": (
            oracle_det,
            loop_cfg("phrase_guidance", regions=False),
        ),
    }
    if every:
        loops[f"reweight{every}"] = (det, loop_cfg("reweight", gate_fixes=False))
        loops[f"phrase guidance{every}"] = (det, loop_cfg("phrase_guidance", gate_fixes=False))
    if only_plain:
        loops = {}
    if args.only:
        loops = {k: v for k, v in loops.items() if any(o in k for o in args.only)}
    if args.skip:
        loops = {k: v for k, v in loops.items() if not any(o in k for o in args.skip)}
    for name, (d, cfg) in loops.items():
        clock = Clock()
        # A fresh detector object per loop (same backend), so each clock wraps only its own.
        card = None if d is oracle_det else ver
        fb = clock.wrap(FeedbackPipeline(pipe, type(d)(d.backend, d.config), cfg, verifier=card))
        ok, js, spent, n_evals = [], [], [], [0]
        with count_evals(pipe.unet, n_evals):
            for i, pr in enumerate(tqdm(prompts, desc=name)):
                fb.config.seed = 1000 * i
                h = fb(pr.text, **GEN).history[0]
                good, j = kept_right(h)
                ok.append(good)
                js.append(j)
                spent.append(h.num_steps)
        steps[name] = float(np.mean(spent))
        evals[name] = n_evals[0] / len(prompts)
        results[name] = np.array(ok)
        judgements[name] = js
        clocks[name] = clock
        if args.json:  # finished rows survive a crash later in the run
            partial = {k: v.astype(int).tolist() for k, v in results.items()}
            with open(args.json + ".partial", "w") as f:
                json.dump({"n_objects": n_obj.tolist(), "ok": partial}, f)

    ae_idx = [] if only_plain else list(range(min(args.ae_n, args.n)))
    if ae_idx:
        clock = Clock()
        fb = clock.wrap(
            FeedbackPipeline(
                pipe,
                MisalignmentDetector(det.backend, det.config),
                loop_cfg("attend_and_excite", stop_when_aligned=not args.ae_no_stop),
                verifier=ver,
            )
        )
        ok, spent, n_evals = [], [], [0]
        with count_evals(pipe.unet, n_evals):
            for i in tqdm(ae_idx, desc="attend-and-excite"):
                fb.config.seed = 1000 * i
                h = fb(prompts[i].text, **GEN).history[0]
                ok.append(kept_right(h)[0])
                spent.append(h.num_steps)
        steps["attend-and-excite"] = float(np.mean(spent))
        evals["attend-and-excite"] = n_evals[0] / len(ae_idx)
        results["attend-and-excite"] = np.array(ok)
        clocks["attend-and-excite"] = clock

    names = {
        "single": "single sample",
        "bon_clip": f"best-of-{N} by CLIPScore",
        "bon_fclip": f"best-of-{N} by the region score (the rule without a card)",
        "bon_fclip_whole": f"best-of-{N} by whole-image F-CLIPScore (no card, no regions)",
        "bon_verifier": f"best-of-{N} by the verifier card ({ver.select_by if ver else ''})",
        "bon_fclip_card": f"best-of-{N} by the reports' F-CLIPScore at the detector card's eps",
        "any": f"any of {N} plain samples right (ceiling)",
    }
    base = results["bon_clip"]
    print(f"\nLoop faithfulness: {args.n} held-out prompts, budget {N} images per prompt\n")
    print(
        "| strategy | 2-object | 1-object | 2-object vs best-of-N CLIPScore (95% CI) "
        "| steps per prompt | denoiser evals per prompt (measured) |"
    )
    print("|---|---|---|---|---|---|")
    table = {}
    for key, ok in results.items():
        sub = np.array(ae_idx) if key == "attend-and-excite" else np.arange(args.n)
        two, one = sub[n_obj[sub] == 2], sub[n_obj[sub] == 1]
        okf = np.zeros(args.n, dtype=bool)
        okf[sub] = ok
        d, lo, hi = bootstrap_diff(okf[two], base[two])
        table[key] = {
            "two_object": float(okf[two].mean()),
            "one_object": float(okf[one].mean()),
            "n_two": len(two),
            "n_one": len(one),
            "diff_two_vs_bon_clip": [d, lo, hi],
        }
        label = names.get(key, key) + (f" (first {len(sub)} prompts)" if len(sub) < args.n else "")
        # plain rows: one full-step image (single) or N of them; loops: what they spent
        cost = steps.get(key, 20.0 if key == "single" else float(N * 20))
        table[key]["steps_per_prompt"] = cost
        # plain rows run CFG's doubled batch at guidance 4: two evaluations per step
        n_ev = evals.get(key, 2 * cost)
        table[key]["denoiser_evals_per_prompt"] = n_ev
        print(
            f"| {label} | {100 * okf[two].mean():.1f} | {100 * okf[one].mean():.1f} | "
            f"{d:+.1f} [{lo:+.1f}, {hi:+.1f}] | {cost:.0f} | {n_ev:.0f} |"
        )
    auc = None
    if right_two and any(right_two) and not all(right_two):
        from sklearn.metrics import roc_auc_score

        two = n_obj == 2
        auc = {
            "clip_score": float(roc_auc_score(right_two, clip_two)),
            "region_score": float(roc_auc_score(right_two, reg_two)),
            "n_images": len(right_two),
            "n_right": int(sum(right_two)),
        }
        line = (
            f"\nPlain two-object samples ({auc['n_images']}, {auc['n_right']} right): AUC right "
            f"vs wrong, region score {auc['region_score']:.3f}, CLIPScore "
            f"{auc['clip_score']:.3f}"
        )
        if ver is not None:
            auc["verifier"] = float(roc_auc_score(right_two, p_two))
            line += (
                f", verifier's P(right) {auc['verifier']:.3f}; selection accuracy (kept image "
                f"right), verifier card {100 * results['bon_verifier'][two].mean():.1f}%"
            )
        print(
            line + f"; region score {100 * results['bon_fclip'][two].mean():.1f}%, CLIPScore "
            f"{100 * results['bon_clip'][two].mean():.1f}%"
        )
    if which_word["whole"]:
        n_w = len(which_word["whole"])
        held = which_word["box_holds_object"]
        print(
            f"\nWhich word, on the {n_w} wrong plain two-object samples: the most negative "
            f"word is a wrong one (oracle) {100 * np.mean(which_word['whole']):.1f}% whole-image, "
            f"{100 * np.mean(which_word['regions']):.1f}% by regions; when it is a wrong "
            f"attribute, its box holds that object "
            f"{100 * np.mean(held) if held else float('nan'):.1f}% (n {len(held)})"
        )
    print("\nWord-kind accuracy of the kept image (all prompts):\n")
    print("| strategy | color | shape | size | position |\n|---|---|---|---|---|")
    for key, js in judgements.items():
        acc = word_kind_accuracy(js)
        print(
            f"| {names.get(key, key)} | "
            + " | ".join(
                f"{acc.get(k, float('nan')):.3f}" for k in ("color", "shape", "size", "position")
            )
            + " |"
        )
    print("\nDetector on plain samples, per word kind (false alarms: right words flagged):\n")
    print(
        "| word kind | right words | false alarms | wrong words | caught |\n|---|---|---|---|---|"
    )
    kinds_json = {}
    for k in sorted(per_kind):
        r, rf, w, wf = per_kind[k]
        kinds_json[k] = {
            "false_alarm": rf / max(r, 1),
            "recall": wf / max(w, 1),
            "n_right": r,
            "n_wrong": w,
        }
        print(f"| {k} | {r} | {100 * rf / max(r, 1):.1f}% | {w} | {100 * wf / max(w, 1):.1f}% |")
    prec = flagged_wrong / max(flagged, 1)
    rec = wrong_caught / max(wrong_total, 1)
    print(
        f"\nDetector on plain samples: {flagged} content words flagged, {100 * prec:.1f}% of "
        f"them wrong by the oracle; it caught {100 * rec:.1f}% of the {wrong_total} wrong words."
    )
    for name, c in clocks.items():
        total = c.feedback + c.generation
        print(
            f"{name}: feedback {c.feedback:.1f} s of {total:.1f} s loop time "
            f"({100 * c.feedback / max(total, 1e-9):.1f}%)"
        )
    out = {
        "table": table,
        "flag_precision": prec,
        "flag_recall": rec,
        "per_kind": kinds_json,
        "detector": args.detector,
        "eps": eps,
        "verifier": str(ver_path) if ver is not None else None,
        "auc_two_object": auc,
        "which_word": {k: float(np.mean(v)) if v else None for k, v in which_word.items()},
        "budget": N,
        "time_share": {
            k: c.feedback / max(c.feedback + c.generation, 1e-9) for k, c in clocks.items()
        },
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    save_result(
        args.results, out, kind="loop_faithfulness", page="loop", title=f"The loop, budget {N}"
    )


if __name__ == "__main__":
    main()
