"""Generate a pool of oracle-labelled images with the shipped `shapes-sd-tiny` pipeline.

    python -m shapesworld.build.generate_shapes_pool --output-dir runs/pool --parts 24

Part k holds `--prompts-per-part` prompts (one-object prompts in every third part, two-object
ones otherwise, from seeds the benchmarks never use) and `--images-per-prompt` images of each,
labelled by `shapesworld.generated.label_generated`. Each part is written when it is finished
(`part-K.npz` images, then `part-K.jsonl` labels), so a killed run resumes where it stopped.
`python -m shapesworld.build.train_shapes_clip --generated-pool DIR` trains on it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from tqdm.auto import tqdm

from generation.finetune.ranges import COUNT, NONNEG, check_ranges
from recipes.cli import parse_config, run_recipe
from shapesworld.generated import POOL_SEED, label_generated
from shapesworld.pipelines import GUIDANCE, PIPELINE_NAME, STEPS, load_pipeline, prompt_set


@dataclass
class PoolConfig:
    output_dir: str = "runs/pool"
    pipeline: str = PIPELINE_NAME
    parts: int = 24
    prompts_per_part: int = 64
    images_per_prompt: int = 4
    steps: int = STEPS
    guidance: float = GUIDANCE
    threads: int = 2

    RANGES: ClassVar[dict] = {
        "parts": COUNT,
        "prompts_per_part": COUNT,
        "images_per_prompt": COUNT,
        "steps": COUNT,
        "guidance": NONNEG,
        "threads": COUNT,
    }

    def __post_init__(self):
        check_ranges(self)


def main(cfg: PoolConfig) -> dict:
    from generation.figures import to_pil

    torch.set_num_threads(cfg.threads)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    pipe = load_pipeline(cfg.pipeline)
    counts = {"images": 0, "right": 0}
    for k in tqdm(range(cfg.parts), desc="pool parts"):
        meta = out / f"part-{k:05d}.jsonl"
        if meta.is_file():
            continue
        rng = np.random.default_rng([POOL_SEED, k])
        n_obj = 1 if k % 3 == 0 else 2
        prompts = prompt_set(cfg.prompts_per_part, n_objects=n_obj, seed=POOL_SEED + k)
        texts = [p.text for p in prompts for _ in range(cfg.images_per_prompt)]
        gens = [torch.Generator().manual_seed(100_000 * k + i) for i in range(len(texts))]
        with torch.no_grad():
            imgs = pipe(
                texts,
                num_inference_steps=cfg.steps,
                guidance_scale=cfg.guidance,
                generator=gens,
                output_type="pt",
            ).images
        pils = [to_pil(im) for im in imgs]
        labels = [label_generated(im, t, rng) for im, t in zip(pils, texts)]
        arr = np.stack([np.asarray(im.convert("RGB")) for im in pils])
        np.savez_compressed(out / f"part-{k:05d}.npz", images=arr)
        meta.write_text("".join(json.dumps(x.to_dict()) + "\n" for x in labels))
        counts["images"] += len(labels)
        counts["right"] += sum(x.right for x in labels)
    return counts


def parse_args(argv=None) -> PoolConfig:
    return parse_config(PoolConfig, argv, description=__doc__)


if __name__ == "__main__":
    run_recipe(main, parse_args)
