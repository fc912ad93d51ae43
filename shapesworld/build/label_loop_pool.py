"""Images of the shipped `shapes-sd-tiny`, labelled right/wrong by the pixel oracle, in the
format `clip4dm calibrate --data` reads: what a user makes with their own generator and ~300
labels, here made offline.

    python -m shapesworld.build.label_loop_pool --output-dir runs/calibration --prompts 150

Prompts come from `CALIBRATION_SEED` (no benchmark or training pool uses them), half one-object
and half two-object; prompt i's image k is seeded `seed + 1000 i + k` (as the loop seeds a
prompt's images). Writes `images/*.png` and `labels.jsonl`, one line per image as it is made
(`{"image", "caption", "right", "wrong_words", "group", "seed"}`), so a killed run resumes.
Then: `clip4dm calibrate --data runs/calibration/labels.jsonl --verifier verifier.json`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from tqdm.auto import tqdm

from generation.finetune.ranges import COUNT, NONNEG, NONNEG_INT, check_ranges
from recipes.cli import parse_config, run_recipe
from shapesworld.pipelines import (
    CALIBRATION_SEED,
    GUIDANCE,
    PIPELINE_NAME,
    STEPS,
    judge_tensor,
    prompt_set,
)


@dataclass
class LabelPoolConfig:
    output_dir: str = "runs/calibration"
    pipeline: str = PIPELINE_NAME
    prompts: int = 150
    """Prompts, half one-object and half two-object."""
    images_per_prompt: int = 4
    steps: int = STEPS
    guidance: float = GUIDANCE
    seed: int = 7_000_000
    """Base image seed (the benchmarks use 1000 i + k from 0)."""
    threads: int = 2

    RANGES: ClassVar[dict] = {
        "prompts": COUNT,
        "images_per_prompt": COUNT,
        "steps": COUNT,
        "guidance": NONNEG,
        "seed": NONNEG_INT,
        "threads": COUNT,
    }

    def __post_init__(self):
        check_ranges(self)


def calibration_prompts(n: int) -> list[str]:
    one = prompt_set(n // 2, n_objects=1, seed=CALIBRATION_SEED)
    two = prompt_set(n - n // 2, n_objects=2, seed=CALIBRATION_SEED + 1)
    return [p.text for pair in zip(one, two) for p in pair] + [p.text for p in two[len(one) :]]


def main(cfg: LabelPoolConfig) -> dict:
    from generation.figures import to_pil
    from shapesworld.pipelines import load_pipeline

    torch.set_num_threads(cfg.threads)
    out = Path(cfg.output_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    labels = out / "labels.jsonl"
    done = set()
    if labels.is_file():
        for line in labels.read_text().splitlines():
            try:
                done.add(json.loads(line)["group"])
            except (json.JSONDecodeError, KeyError):
                continue  # a line cut by a kill: that prompt is made again
        if labels.stat().st_size and not labels.read_bytes().endswith(b"\n"):
            with open(labels, "a") as f:
                f.write("\n")
    pipe = load_pipeline(cfg.pipeline)
    prompts = calibration_prompts(cfg.prompts)
    n_right = n_new = 0
    with open(labels, "a", encoding="utf-8") as f:
        for i, prompt in enumerate(tqdm(prompts, desc="labelled pool", unit="prompt")):
            if i in done:
                continue
            seeds = [cfg.seed + 1000 * i + k for k in range(cfg.images_per_prompt)]
            with torch.no_grad():
                images = pipe(
                    prompt,
                    num_images_per_prompt=len(seeds),
                    generator=[torch.Generator().manual_seed(s) for s in seeds],
                    num_inference_steps=cfg.steps,
                    guidance_scale=cfg.guidance,
                    output_type="pt",
                ).images
            rows = []
            for k, (img, s) in enumerate(zip(images, seeds)):
                j = judge_tensor(img, prompt)
                name = f"images/{i:05d}_{k}.png"
                to_pil(img).save(out / name)
                wrong = [j.words[w].word for w in j.wrong_words]
                rows.append(
                    {
                        "image": name,
                        "caption": prompt,
                        "right": bool(j.all_correct),
                        "wrong_words": sorted(set(wrong)),
                        "group": i,
                        "seed": s,
                    }
                )
                n_right += bool(j.all_correct)
                n_new += 1
            f.write("".join(json.dumps(r) + "\n" for r in rows))  # a prompt's images together
            f.flush()
    return {"labels": str(labels), "images_written": n_new, "right": n_right}


def parse_args(argv=None) -> LabelPoolConfig:
    return parse_config(LabelPoolConfig, argv, description=__doc__)


if __name__ == "__main__":
    run_recipe(main, parse_args)
