"""Package a trained `shapes-sd-tiny` pipeline into the repository, with its model card.

    python -m shapesworld.build.package_shapes_t2i --run runs/shapes-sd-tiny [--n 200]

Copies `RUN/pipeline` (fp16 safetensors, stock diffusers layout) to
`shapesworld/weights/shapes-sd-tiny`, then measures on a validation prompt set (seeds the
training never drew; one image per prompt, 20 DPM-Solver steps, guidance 4) how often the
ShapesWorld oracle finds the image fully right, per prompt kind and per word kind, and writes
`model_card.json` and `README.md` beside the weights.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

from generation.finetune.ranges import COUNT, NONNEG, Range, check_ranges
from recipes.cli import parse_config, run_recipe
from shapesworld.pipelines import (
    GUIDANCE,
    STEPS,
    VALIDATION_SEED,
    generate_and_judge,
    load_pipeline,
    prompt_set,
    word_kind_accuracy,
)


@dataclass
class PackageT2IConfig:
    run: str = "runs/shapes-sd-tiny"
    dest: str = str(Path(__file__).resolve().parents[1] / "weights" / "shapes-sd-tiny")
    n: int = 200
    """Validation prompts per kind (one- and two-object)."""
    steps: int = STEPS
    guidance: float = GUIDANCE
    batch: int = 25
    detector: str = "shapes-tiny"
    """Detector whose stop threshold is calibrated on the generated validation images."""
    rate: float = 0.1
    """Target share of fully right generated images that still get a word flagged."""

    RANGES: ClassVar[dict] = {
        "n": COUNT,
        "steps": COUNT,
        "guidance": NONNEG,
        "batch": COUNT,
        "rate": Range(0, 1, lo_open=True, hi_open=True),
    }

    def __post_init__(self):
        check_ranges(self)


def validate(pipe, n: int, steps: int, guidance: float, batch: int) -> tuple[dict, list]:
    """Oracle accuracy per prompt kind, and the (image, prompt, judgement) triples."""
    out, made = {}, []
    for k in (1, 2):
        prompts = prompt_set(n, n_objects=k, seed=VALIDATION_SEED + k)
        t0 = time.perf_counter()
        triples = generate_and_judge(
            pipe,
            [p.text for p in prompts],
            steps=steps,
            guidance=guidance,
            batch=batch,
            desc=f"{k}-object",
        )
        judgements = [j for _, _, j in triples]
        made += triples
        out[f"{k}_object"] = {
            "prompts": n,
            "fully_right": sum(j.all_correct for j in judgements) / n,
            "word_kind_accuracy": word_kind_accuracy(judgements),
            "seconds_per_image": (time.perf_counter() - t0) / n,
        }
    return out, made


def calibrate_loop_threshold(made: list, detector: str, rate: float) -> dict:
    """The detector's eps for the loop's stop rule, calibrated on *generated* images: the
    largest eps at which at most `rate` of the images the oracle finds fully right get a word
    flagged (a threshold calibrated on rendered scenes does not transfer to generated ones).
    Also reports the recall on oracle-wrong words and the false-alarm rate per word kind."""
    from feedback import MisalignmentDetector
    from feedback.eval.calibration import calibrate_threshold
    from feedback.eval.datasets import Sample
    from generation.figures import to_pil

    det = MisalignmentDetector.from_pretrained(detector)
    samples = [
        Sample(
            f"gen-{i}",
            to_pil(img),
            prompt,
            is_original=j.all_correct,
            foil_spans=[(v.start, v.end) for v in j.words if v.correct is False],
        )
        for i, (img, prompt, j) in enumerate(made)
    ]
    reports = det.detect([s.image for s in samples], [s.caption for s in samples])
    cal = calibrate_threshold(samples, reports, rate=rate).to_dict()
    eps = cal["threshold"]
    flagged: dict[str, list[int]] = {}
    for (_, _, j), rep in zip(made, reports):
        for v, w in zip(j.words, rep.words):
            if v.kind is not None and v.correct is True and w.score is not None:
                flagged.setdefault(v.kind, []).append(int(w.score < eps))
    cal["false_alarm_rate_per_right_word"] = {k: sum(v) / len(v) for k, v in flagged.items()}
    cal["detector"] = detector
    cal["card_threshold"] = det.config.threshold
    cal["n_right"] = sum(s.is_original for s in samples)
    cal["n_wrong"] = len(samples) - cal["n_right"]
    return cal


def _cell(v: float | None) -> str:
    return "–" if v is None or v != v else f"{v:.2f}"


def write_readme(dest: Path, card: dict) -> None:
    """The model card's README from `model_card.json`'s content."""
    training, metrics = card["training"], card["validation"]
    loops = {card["loop_threshold"]["detector"]: card["loop_threshold"]}
    loops.update(card.get("loop_thresholds") or {})
    cfg = card["sampling"]
    one, two = metrics["1_object"], metrics["2_object"]
    (dest / "README.md").write_text(
        "# shapes-sd-tiny\n\n"
        "A genuine diffusers `StableDiffusionPipeline` for ShapesWorld, trained from scratch by "
        "`shapesworld.build.train_shapes_t2i`: 32x32 RGB, `AutoencoderKL` (16x16x4 latent, "
        f"{training.get('vae_psnr_db', float('nan')):.1f} dB reconstruction PSNR), "
        "`UNet2DConditionModel` with cross-attention at 8x8 and 4x4, conditioned on the frozen "
        "text tower of `shapes-tiny` as a transformers `CLIPTextModel`; "
        "`DPMSolverMultistepScheduler`. fp16 safetensors; loads offline with "
        "`StableDiffusionPipeline.from_pretrained(<this folder>)`.\n\n"
        f"Training: {training.get('unet_steps_total', training.get('unet_steps'))} UNet steps "
        f"and {training.get('vae_steps')} VAE "
        f"steps at batch {training['config']['batch_size']}, "
        f"{training.get('minutes_total', float('nan')):.0f} minutes on 2 CPU cores.\n\n"
        f"Validation ({cfg['n']} held-out prompts per kind, one image each, {cfg['steps']} steps, "
        f"guidance {cfg['guidance']}), judged by the ShapesWorld pixel oracle:\n\n"
        "| prompts | fully right | color | shape | size | position |\n|---|---|---|---|---|---|\n"
        + "".join(
            f"| {name} | {m['fully_right']:.2f} | "
            + " | ".join(
                _cell(m["word_kind_accuracy"].get(k))
                for k in ("color", "shape", "size", "position")
            )
            + " |\n"
            for name, m in (("one object", one), ("two objects", two))
        )
        + "\nLoop stop rule, per detector: eps calibrated on these generated images so that "
        "about 10% of the fully right images get a word flagged "
        "(`shapesworld.build.calibrate_loop`); `clip4dm demo` and `clip4dm generate` use it "
        "unless `--threshold` is given.\n\n"
        "| detector | eps | right images flagged | wrong word flagged | wrong images with a "
        "flag | detector card's eps (rendered scenes) |\n|---|---|---|---|---|---|\n"
        + "".join(
            f"| `{name}` | {c['threshold']:.5f} | {100 * c['false_flag_rate']:.0f}% of "
            f"{c['n_right']} | {100 * c['foil_recall']:.0f}% of {c['n_wrong']} | "
            f"{100 * c['foil_detection']:.0f}% | {c['card_threshold']:.5f} |\n"
            for name, c in loops.items()
        )
    )


def main(cfg: PackageT2IConfig) -> dict:
    src, dest = Path(cfg.run) / "pipeline", Path(cfg.dest)
    if not (src / "model_index.json").is_file():
        raise FileNotFoundError(
            f"no pipeline at {src}: run `python -m shapesworld.build.train_shapes_t2i` first"
        )
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("training.json"))
    training = json.loads((src / "training.json").read_text())
    pipe = load_pipeline(dest.name)
    metrics, made = validate(pipe, cfg.n, cfg.steps, cfg.guidance, cfg.batch)
    loop = calibrate_loop_threshold(made, cfg.detector, cfg.rate)
    card = {
        "training": training,
        "validation": metrics,
        "loop_threshold": loop,
        "sampling": asdict(cfg),
    }
    (dest / "model_card.json").write_text(json.dumps(card, indent=2) + "\n")
    write_readme(dest, card)
    print(json.dumps(metrics, indent=2))
    return card


def parse_args(argv=None) -> PackageT2IConfig:
    return parse_config(PackageT2IConfig, argv, description=__doc__)


if __name__ == "__main__":
    run_recipe(main, parse_args)
