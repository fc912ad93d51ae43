"""Ship a trained tiny CLIP as `shapes-tiny`: weights, config, measured model card.

Usage:

    python -m shapesworld.build.package_shapes_clip --export runs/shapes-tiny/export \
        --out shapesworld/weights/shapes-tiny

Measures, on a *validation* split (held-out seed + 1, never the test split the README reports):
500-way image->text retrieval, how often the true caption beats each foil kind, and the LA of
CLIP4DM for every K; the card recommends the K with the best validation LA and the eps with
the best validation word F1. `MisalignmentDetector.from_pretrained("shapes-tiny")` applies
those recommendations unless the caller passes its own values.
"""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from feedback import DetectorConfig, MisalignmentDetector
from feedback.backends import cosine, encode_text_fast
from feedback.eval.evaluate import run_benchmark
from shapesworld import HELD_OUT_SEED, describe, render_scene, sample_scene
from shapesworld.benchmark import load_shapes_foil

VALIDATION_SEED = HELD_OUT_SEED + 1


@dataclass
class PackageConfig:
    export: str = "runs/shapes-tiny/export"
    out: str = "shapesworld/weights/shapes-tiny"
    n_retrieval: int = 500
    n_foils: int = 400


def retrieval_accuracy(det: MisalignmentDetector, n: int) -> float:
    """Top-1 image->caption retrieval among n held-out scenes (template prefixed)."""
    rng = np.random.default_rng(VALIDATION_SEED)
    scenes = [sample_scene(rng) for _ in range(n)]
    caps = ["A photo depicts " + describe(s, rng).text for s in scenes]
    b = det.backend
    with torch.no_grad():
        img = torch.nn.functional.normalize(
            b.encode_image(b.preprocess([render_scene(s) for s in scenes])).float(), dim=-1
        )
        ids = b.tokenize(caps)
        eot = b.eot_positions(ids)
        txt = encode_text_fast(b, ids[:, : int(eot.max()) + 1], eot)
        txt = torch.nn.functional.normalize(txt.float(), dim=-1)
    return float(((img @ txt.T).argmax(1) == torch.arange(n)).float().mean())


def prefer_true(det: MisalignmentDetector, n: int) -> dict:
    samples = list(load_shapes_foil(n=n, seed=VALIDATION_SEED))
    out = {}
    b = det.backend
    for kind in ("color", "shape", "size", "position"):
        foils = [s for s in samples if s.kind == kind and not s.is_original]
        origs = [s for s in samples if s.kind == kind and s.is_original]
        wins = []
        for f, o in zip(foils, origs):
            ids = b.tokenize(["A photo depicts " + f.caption, "A photo depicts " + o.caption])
            eot = b.eot_positions(ids)
            with torch.no_grad():
                img = b.encode_image(b.preprocess([f.image, f.image]))
                c = cosine(img, encode_text_fast(b, ids[:, : int(eot.max()) + 1], eot))
            wins.append(bool(c[1] > c[0]))
        out[kind] = float(np.mean(wins))
    return out


def main(cfg: PackageConfig) -> dict:
    src, dst = Path(cfg.export), Path(cfg.out)
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("open_clip_config.json", "open_clip_model.safetensors"):
        shutil.copy(src / name, dst / name)
    training = json.loads((src / "training.json").read_text())
    det = MisalignmentDetector.from_pretrained(str(dst))
    n_layers = det.backend.num_text_layers
    samples = list(load_shapes_foil(n=cfg.n_foils, seed=VALIDATION_SEED))
    la_by_k, sweeps = {}, {}
    for k in range(1, n_layers + 1):
        r = run_benchmark(
            MisalignmentDetector(det.backend, DetectorConfig(layers=k)),
            samples,
            benchmark="shapes-foil",
            progress=False,
        )
        la_by_k[k] = r.metrics["la"]
        sweeps[k] = r.threshold_sweep
    best_k = max(la_by_k, key=la_by_k.get)
    best_eps = max(sweeps[best_k], key=lambda s: s["f1"])["threshold"]
    metrics = {
        "retrieval_top1_500": retrieval_accuracy(det, cfg.n_retrieval),
        "prefer_true_caption_over_foil": prefer_true(det, cfg.n_foils),
        "validation_la_by_layers": la_by_k,
    }
    card = {
        "backend": "open_clip",
        "recommended": {"layers": best_k, "threshold": best_eps},
        "metrics": metrics,
        "training": training,
    }
    (dst / "clip4dm.json").write_text(json.dumps(card, indent=2))
    mcfg = json.loads((dst / "open_clip_config.json").read_text())["model_cfg"]
    size_mb = (dst / "open_clip_model.safetensors").stat().st_size / 2**20
    if training.get("init_from"):
        intro = [
            f"# {dst.name}: shapes-tiny fine-tuned for generated images",
            "",
            f"Fine-tuned from `{Path(training['init_from']).name}` by",
            "`python -m shapesworld.build.train_shapes_clip --init-from ... --generated-pool ...`:",
            "half of every batch is rendered scenes (as before), half is images the shipped",
            "`shapes-sd-tiny` generated (`python -m shapesworld.build.generate_shapes_pool`), each",
            "with the true caption the pixel oracle reads from it and, when the oracle finds the",
            "image wrong, the prompt it was generated from as a hard negative (the generator's own",
            f"mistake). fp16 safetensors ({size_mb:.1f} MB). `shapes-tiny` stays loadable as it",
            "was.",
            "",
        ]
    else:
        intro = [
            f"# {dst.name}: a CLIP trained from scratch on ShapesWorld",
            "",
            "Trained by `python -m shapesworld.build.train_shapes_clip` (contrastive loss on",
            "freshly rendered 32 px scenes, 3 hard-negative foils per image covering",
            "color/shape/size/position/object swap, blur and palette-shift augmentation), CLIP's",
            f"real BPE tokenizer, fp16 safetensors ({size_mb:.1f} MB, mostly the 49,408-row token",
            "table).",
            "",
        ]
    lines = intro + [
        f"- architecture: ViT {mcfg['vision_cfg']['image_size']} px / patch "
        f"{mcfg['vision_cfg']['patch_size']}, {mcfg['vision_cfg']['layers']} layers; text "
        f"{mcfg['text_cfg']['layers']} layers x {mcfg['text_cfg']['width']}, context "
        f"{mcfg['text_cfg']['context_length']}; embed {mcfg['embed_dim']}",
        f"- training: {training.get('steps')} steps, {training.get('minutes_this_run')} min "
        "(last run segment) on 2 CPU cores",
        f"- 500-way image->caption retrieval (validation): {metrics['retrieval_top1_500']:.3f}",
        "- true caption preferred over its foil (validation): "
        + ", ".join(f"{k} {v:.2f}" for k, v in metrics["prefer_true_caption_over_foil"].items()),
        "- CLIP4DM LA on validation foils by K: "
        + ", ".join(f"K={k} {v:.3f}" for k, v in la_by_k.items()),
        f"- recommended: layers={best_k}, threshold={best_eps:g} (applied by "
        f"`from_pretrained('{dst.name}')` unless overridden)",
        "",
        "Measured by `python -m shapesworld.build.package_shapes_clip` on the validation split "
        "(seed "
        f"{VALIDATION_SEED}); the README's table uses the separate test split.",
    ]
    (dst / "README.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return card


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--export", default=PackageConfig.export)
    p.add_argument("--out", default=PackageConfig.out)
    p.add_argument("--n-retrieval", type=int, default=PackageConfig.n_retrieval)
    p.add_argument("--n-foils", type=int, default=PackageConfig.n_foils)
    a = p.parse_args()
    main(PackageConfig(a.export, a.out, a.n_retrieval, a.n_foils))
