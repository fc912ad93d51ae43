"""Calibrate a detector's stop-rule eps on the shipped pipeline's generated images; write the
pipeline's card.

    python -m shapesworld.build.calibrate_loop --detector shapes-tiny-gen [--n 200] [--rate 0.1]

Generates the pipeline's validation prompts (seeds the training and the benchmarks never
use; one image each), has the ShapesWorld oracle label every image, and picks the largest eps
at which at most `rate` of the fully right images get a word flagged; records the recall on
the wrong ones and the false alarms per word kind under `loop_thresholds[detector]` in the
pipeline's `model_card.json` (read by `shapesworld.pipelines.loop_threshold`, so
`clip4dm demo --model DETECTOR` and the loop benchmark use it). For your own generator and
CLIP, label some generated images and run `clip4dm calibrate` instead.
"""

from __future__ import annotations

import argparse
import json

import torch

from shapesworld.build.package_shapes_t2i import calibrate_loop_threshold, validate, write_readme
from shapesworld.pipelines import PIPELINE_NAME, load_pipeline, pipeline_path


def main(detector: str, n: int, rate: float, pipeline: str = PIPELINE_NAME) -> dict:
    torch.set_num_threads(2)
    card_path = pipeline_path(pipeline) / "model_card.json"
    card = json.loads(card_path.read_text())
    cfg = card["sampling"]
    _, made = validate(load_pipeline(pipeline), n, cfg["steps"], cfg["guidance"], cfg["batch"])
    cal = calibrate_loop_threshold(made, detector, rate)
    card.setdefault("loop_thresholds", {})[detector] = cal
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    write_readme(card_path.parent, card)
    print(json.dumps(cal, indent=2))
    return cal


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--detector", required=True, help="shipped detector name or folder")
    p.add_argument("--n", type=int, default=200, help="validation prompts per kind")
    p.add_argument("--rate", type=float, default=0.1, help="target false-alarm rate")
    p.add_argument("--pipeline", default=PIPELINE_NAME)
    a = p.parse_args()
    main(a.detector, a.n, a.rate, a.pipeline)
