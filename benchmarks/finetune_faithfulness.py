"""Does LoRA fine-tuning on CLIP4DM feedback make the shipped pipeline satisfy more prompts?

    python benchmarks/finetune_faithfulness.py [--rounds 12] [--prompts 32] [--n 150] \
        [--detector shapes-tiny-gen] [--keep-fraction 0.5] [--caption-dropout 0.2] \
        [--train lora|full] [--val-every K] [--out runs/finetune-bench]

Every recipe is trained from the same shipped `shapes-sd-tiny` at equal compute: the same
training prompts and seeds, `--images` generated images per prompt and round, the same
optimizer steps. Then one image per held-out prompt (prompts the recipes never train on,
`--n` of each kind, paired seeds) is judged by the ShapesWorld oracle, before and after. Rows:

- reward-filtered, F-CLIPScore (CLIP4DM's scalar reward) and its CLIPScore twin, and the
  same recipe learning only from images the pixel oracle finds right (the ceiling: perfect
  feedback);
- DDPO-style policy gradient with F-CLIPScore and its CLIPScore twin;
- loop distillation (token level: the feedback loop's re-weighting of the flagged words,
  distilled into the plain prompt) and its resample control (the same loop with no
  word-level fix).

Recipes already trained in `--out` are not trained again (each resumes from its checkpoint)
and held-out verdicts are written as each pipeline is judged (reused while its LoRA and the
prompts are unchanged), so an interrupted benchmark picks up where it stopped.

Prints a table (whole-prompt satisfaction per prompt kind, with a paired bootstrap 95%
interval of the two-object difference to the CLIPScore twin) and writes the training curves
(mean reward of the generated and of the kept images per round) as a PNG.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from results_io import add_results_argument, save_result, tables_from
from tqdm.auto import tqdm

from shapesworld.pipelines import generate_and_judge, load_pipeline, prompt_set

RECIPES = {
    "reward-filtered, F-CLIPScore": ("filtered", {"reward": "f_clip_score"}),
    "reward-filtered, CLIPScore (twin)": ("filtered", {"reward": "clip_score"}),
    "reward-filtered, oracle (ceiling)": (
        "filtered",
        {"reward": "oracle", "min_reward": 1.0, "keep_fraction": 1.0},
    ),
    "DDPO, F-CLIPScore": ("ddpo", {"reward": "f_clip_score"}),
    "DDPO, CLIPScore (twin)": ("ddpo", {"reward": "clip_score"}),
    "loop distillation (reweight)": ("distill", {"strategy": "reweight"}),
    "loop distillation (resample control)": ("distill", {"strategy": "resample"}),
    # anchor data: half of every denoising batch is rendered scenes with exact captions
    "reward-filtered, oracle (ceiling), anchors": (
        "filtered",
        {"reward": "oracle", "min_reward": 1.0, "keep_fraction": 1.0, "anchor_fraction": 0.5},
    ),
    "reward-filtered, F-CLIPScore, anchors": (
        "filtered",
        {"reward": "f_clip_score", "anchor_fraction": 0.5},
    ),
    "reward-filtered, CLIPScore (twin), anchors": (
        "filtered",
        {"reward": "clip_score", "anchor_fraction": 0.5},
    ),
    # word-level hindsight relabeling (recipes/finetune_relabel.py), anchors included
    "relabel, detector (word level), anchors": ("relabel", {"relabel_by": "detector"}),
    "relabel, CLIPScore (twin), anchors": ("relabel", {"relabel_by": "clip_score"}),
    "relabel, oracle (ceiling), anchors": ("relabel", {"relabel_by": "oracle"}),
    # KL-anchored online recipe (recipes/finetune_grpo.py)
    "GRPO (KL 0.1), F-CLIPScore": ("grpo", {"reward": "f_clip_score", "kl": 0.1}),
    "GRPO (KL 0.1), CLIPScore (twin)": ("grpo", {"reward": "clip_score", "kl": 0.1}),
    "GRPO (KL 0.1), oracle (ceiling)": ("grpo", {"reward": "oracle", "kl": 0.1}),
    # the same recipe on the region-aware reward (feedback.regions: each object on its region)
    "GRPO (KL 0.1), region score": ("grpo", {"reward": "regions", "kl": 0.1}),
    # the control: continued training on rendered scenes alone, no sample generated
    "anchors only (control: more training, no feedback)": ("anchors", {}),
    # the KL weight's sweep (0 is DDPO)
    "GRPO (KL 0.01), F-CLIPScore": ("grpo", {"reward": "f_clip_score", "kl": 0.01}),
    "GRPO (KL 1), F-CLIPScore": ("grpo", {"reward": "f_clip_score", "kl": 1.0}),
}
#: Each CLIP4DM recipe's scalar CLIPScore twin at equal compute (the token-level recipe's is
#: best-of-N by CLIPScore, the same number of plain samples per prompt).
TWINS = {
    "reward-filtered, F-CLIPScore": "reward-filtered, CLIPScore (twin)",
    "reward-filtered, oracle (ceiling)": "reward-filtered, CLIPScore (twin)",
    "DDPO, F-CLIPScore": "DDPO, CLIPScore (twin)",
    "loop distillation (reweight)": "reward-filtered, CLIPScore (twin)",
    "loop distillation (resample control)": "reward-filtered, CLIPScore (twin)",
    "reward-filtered, oracle (ceiling), anchors": "reward-filtered, CLIPScore (twin), anchors",
    "reward-filtered, F-CLIPScore, anchors": "reward-filtered, CLIPScore (twin), anchors",
    "relabel, detector (word level), anchors": "relabel, CLIPScore (twin), anchors",
    "relabel, oracle (ceiling), anchors": "relabel, CLIPScore (twin), anchors",
    "GRPO (KL 0.1), F-CLIPScore": "GRPO (KL 0.1), CLIPScore (twin)",
    "GRPO (KL 0.1), oracle (ceiling)": "GRPO (KL 0.1), CLIPScore (twin)",
    "GRPO (KL 0.1), region score": "GRPO (KL 0.1), CLIPScore (twin)",
    "GRPO (KL 0.01), F-CLIPScore": "GRPO (KL 0.1), CLIPScore (twin)",
    "GRPO (KL 1), F-CLIPScore": "GRPO (KL 0.1), CLIPScore (twin)",
}


def satisfaction(pipe, prompts) -> np.ndarray:
    """Whole-prompt oracle verdict of one image per prompt (prompt i: seed 5000 + i)."""
    made = generate_and_judge(pipe, [p.text for p in prompts], seed=5000)
    return np.array([j.all_correct for _, _, j in made])


def held_out(cache: Path, key: str, make_pipe, held: dict) -> dict[int, np.ndarray]:
    """Verdicts on the held-out prompts of each kind, written to `cache` as soon as they are
    known and read back when `key` (what was evaluated) and the prompts are unchanged."""
    n = {str(k): len(v) for k, v in held.items()}
    if cache.is_file():
        saved = json.loads(cache.read_text())
        if saved["key"] == key and saved["n"] == n:
            return {int(k): np.array(v, dtype=bool) for k, v in saved["verdicts"].items()}
    pipe = make_pipe()
    verdicts = {k: satisfaction(pipe, held[k]) for k in held}
    cache.write_text(
        json.dumps({"key": key, "n": n, "verdicts": {k: v.tolist() for k, v in verdicts.items()}})
    )
    return verdicts


def _unit(name: str) -> str:
    """What a recipe's logged reward measures (loop distillation logs FeedbackReward's)."""
    kind, extra = RECIPES[name]
    if kind == "anchors":
        return "none"
    if "relabel_by" in extra:
        return "relabel"
    return extra.get("reward", "f_clip_score")


def compute(log: list[dict], args) -> dict:
    """What a row cost: images generated for training (+ one per validation prompt and
    validation), optimizer steps, and minutes of its rounds (validation included)."""
    n_val = sum(1 for x in log if "val" in x) + (1 if args.val_every else 0)  # + the base
    return {
        "images": int(sum(x["generated"] for x in log)) + args.val_prompts * n_val,
        "optimizer_steps": args.steps * len(log),
        "minutes": round(sum(x["seconds"] for x in log) / 60, 2),
    }


def plot(path: Path, table: dict, logs: dict) -> None:
    """Held-out satisfaction per recipe (with the two-object interval against base) and the
    training curves: each recipe's mean reward per round, one panel per reward unit."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib not installed: no curves)")
        return
    labels = {
        "f_clip_score": "F-CLIPScore reward (eps units; 0 = nothing flagged)",
        "clip_score": "CLIPScore",
        "oracle": "oracle: share of training images right",
    }
    if any(_unit(n) == "relabel" for n in logs):
        labels["relabel"] = "relabel: share of images kept with a caption"
    labels = {k: v for k, v in labels.items() if any(_unit(n) == k for n in logs)}
    # per-round quantities some recipes log: one panel each, every recipe that logs it
    logged = {
        "kl": "per-step KL to the base policy (GRPO)",
        "anchor_share": "anchor share of the denoising examples",
        "val": "validation: share of validation prompts right",
    }
    logged = {k: v for k, v in logged.items() if any(k in x for log in logs.values() for x in log)}
    n = 1 + len(labels) + len(logged)
    fig, ax = plt.subplots(1, n, figsize=(4.5 * n, 4))
    names = list(table)
    y = np.arange(len(names))
    two = [100 * table[n]["two_object"] for n in names]
    one = [100 * table[n]["one_object"] for n in names]
    ax[0].barh(y + 0.2, two, height=0.4, label="two-object")
    ax[0].barh(y - 0.2, one, height=0.4, label="one-object")
    base = two[0]
    for i, n in enumerate(names):
        if "vs_base" in table[n]:
            _, lo, hi = table[n]["vs_base"]
            ax[0].plot([base + lo, base + hi], [i + 0.2, i + 0.2], color="k", lw=1)
    ax[0].set_yticks(y, names, fontsize=7)
    ax[0].invert_yaxis()
    ax[0].set(xlabel="held-out prompts satisfied (%, oracle)", xlim=(0, 100))
    ax[0].legend(fontsize=7, loc="center right")
    for a, unit in zip(ax[1:], labels):
        for name, log in logs.items():
            if _unit(name) == unit:
                a.plot([x["round"] for x in log], [x["reward_all"] for x in log], label=name)
        a.set(xlabel="round", ylabel=labels[unit])
        if a.lines:
            a.legend(fontsize=7)
    for a, key in zip(ax[1 + len(labels) :], logged):
        for name, log in logs.items():
            pts = [(x["round"], x[key]) for x in log if x.get(key) is not None]
            if pts:
                a.plot(*zip(*pts), marker="o" if key == "val" else None, ms=3, label=name)
        a.set(xlabel="round", ylabel=logged[key])
        if key == "kl":
            a.set_yscale("log")
        a.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"\ncurves: {path}")


def _weights_key(folder: Path) -> str:
    """A hash of a recipe's result: its LoRA file or its UNet's weights."""
    from generation.finetune.trainable import trained_weights_file

    return hashlib.sha256(trained_weights_file(folder).read_bytes()).hexdigest()


def main():
    from loop_faithfulness import bootstrap_diff  # this folder is on sys.path

    from generation.finetune import load_trained
    from recipes.finetune_anchors_only import AnchorsOnlyConfig
    from recipes.finetune_anchors_only import main as anchors_only
    from recipes.finetune_ddpo import DDPOConfig
    from recipes.finetune_ddpo import main as ddpo
    from recipes.finetune_grpo import GRPOConfig
    from recipes.finetune_grpo import main as grpo
    from recipes.finetune_loop_distill import DistillConfig
    from recipes.finetune_loop_distill import main as distill
    from recipes.finetune_relabel import RelabelConfig
    from recipes.finetune_relabel import main as relabel
    from recipes.finetune_reward_filtered import FilteredConfig
    from recipes.finetune_reward_filtered import main as filtered

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--prompts", type=int, default=32, help="training prompts per round")
    p.add_argument("--images", type=int, default=4, help="images per prompt and round")
    p.add_argument("--steps", type=int, default=25, help="optimizer steps per round")
    p.add_argument("--lr", type=float, default=None, help="learning rate (recipe default)")
    p.add_argument("--batch-size", type=int, default=8, help="examples per optimizer step")
    p.add_argument("--caption-dropout", type=float, default=0.2, help="denoising recipes")
    p.add_argument(
        "--train", choices=("lora", "full"), default="lora", help="LoRA or the whole UNet"
    )
    p.add_argument(
        "--val-every",
        type=int,
        default=0,
        help="validate every K rounds on the recipes' validation prompts (oracle-judged) and "
        "judge the best validated round on the test prompts (0: the last round)",
    )
    p.add_argument("--val-prompts", type=int, default=256, help="validation prompts")
    p.add_argument(
        "--keep-fraction", type=float, default=0.5, help="reward-filtered: top share of bests"
    )
    p.add_argument("--n", type=int, default=150, help="held-out prompts of each kind")
    p.add_argument("--detector", default="shapes-tiny-gen")
    p.add_argument("--only", nargs="+", default=None, help="recipes whose name has one of these")
    p.add_argument("--out", default="runs/finetune-bench")
    p.add_argument("--plot-only", action="store_true", help="redraw from OUT/results.json")
    add_results_argument(p)
    args = p.parse_args()
    if args.plot_only:
        saved = json.loads((Path(args.out) / "results.json").read_text())
        plot(Path(args.out) / "curves.png", saved["table"], saved["logs"])
        return
    torch.set_num_threads(2)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    held = {k: prompt_set(args.n, n_objects=k) for k in (1, 2)}
    results = {"base (no fine-tuning)": held_out(out / "base.json", "base", load_pipeline, held)}
    logs = {}
    recipes = {k: v for k, v in RECIPES.items() if not args.only or any(o in k for o in args.only)}
    for name, (kind, extra) in tqdm(recipes.items(), desc="recipes"):
        run = out / (name.replace(" ", "_").replace(",", "").replace("(", "").replace(")", ""))
        common = dict(
            output_dir=str(run),
            detector=args.detector,
            rounds=args.rounds,
            prompts_per_round=args.prompts,
            images_per_prompt=args.images,
            steps_per_round=args.steps,
            resume=True,
            caption_dropout=args.caption_dropout,
            batch_size=args.batch_size,
            train=args.train,
            val_every=args.val_every,
            val_prompts=args.val_prompts,
            **({"lr": args.lr} if args.lr is not None else {}),
        )
        train, config = {
            "filtered": (filtered, FilteredConfig),
            "ddpo": (ddpo, DDPOConfig),
            "distill": (distill, DistillConfig),
            "relabel": (relabel, RelabelConfig),
            "grpo": (grpo, GRPOConfig),
            "anchors": (anchors_only, AnchorsOnlyConfig),
        }[kind]
        if kind == "filtered":
            extra = {"keep_fraction": args.keep_fraction, **extra}
        cfg = config(**common, **extra)
        train(cfg)

        # the best validated round (model selection on the validation split), else the last
        result = run / ("best" if args.val_every else cfg.result_name)

        def tuned(result=result):
            return load_trained(load_pipeline(), result)

        key = _weights_key(result)
        results[name] = held_out(run / "held_out.json", key, tuned, held)
        logs[name] = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
        if args.val_every:
            best = json.loads((run / "best.json").read_text())
            print(f"{name}: kept round {best['round']} (validation {100 * best['val']:.1f}%)")

    base = results["base (no fine-tuning)"]
    print(
        f"\nFine-tuning on ShapesWorld ({args.train}): {args.rounds} rounds x {args.prompts} "
        f"prompts x {args.images} images, {args.steps} steps of {args.batch_size} per round"
        + (
            f", validated every {args.val_every} rounds on {args.val_prompts} prompts"
            if args.val_every
            else ""
        )
        + f"; {args.n} held-out prompts per "
        "kind, one image each, oracle-judged (%); differences are two-object, paired, with a "
        "bootstrap 95% interval\n"
    )
    print("| recipe | 2-object | 1-object | vs base | vs its CLIPScore twin | compute |")
    print("|---|---|---|---|---|---|")
    table, shown = {}, []
    for name, r in results.items():
        row = {"two_object": float(r[2].mean()), "one_object": float(r[1].mean())}
        if name in logs:
            row["compute"] = compute(logs[name], args)
        cells = []
        for key, other in (("vs_base", base), ("vs_twin", results.get(TWINS.get(name, "")))):
            if other is None or other is r:
                cells.append("")
                continue
            d, lo, hi = bootstrap_diff(r[2], other[2])
            row[key] = [d, lo, hi]
            cells.append(f"{d:+.1f} [{lo:+.1f}, {hi:+.1f}]")
        table[name] = row
        c = row.get("compute")
        cells.append(
            f"{c['images']} img, {c['optimizer_steps']} steps, {c['minutes']:.1f} min" if c else ""
        )
        print(
            f"| {name} | {100 * r[2].mean():.1f} | {100 * r[1].mean():.1f} | "
            + " | ".join(cells)
            + " |"
        )
        shown.append([name, f"{100 * r[2].mean():.1f}", f"{100 * r[1].mean():.1f}", *cells])
    (out / "results.json").write_text(json.dumps({"table": table, "logs": logs}, indent=2))
    plot(out / "curves.png", table, logs)
    head = ["recipe", "2-object", "1-object", "vs base", "vs its CLIPScore twin", "compute"]
    save_result(
        args.results,
        {"table": table, "args": vars(args)},
        kind="finetune_faithfulness",
        page="finetune",
        title=f"Fine-tuning recipes against the base ({args.train})",
        tables=[tables_from(head, shown)],
    )


if __name__ == "__main__":
    main()
