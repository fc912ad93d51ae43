"""Calibrate a shipped model's eps for a false-flag rate on correct captions; write the card.

Usage:

    python -m shapesworld.build.calibrate_threshold --model shapes-tiny --rate 0.1 [--write]

Runs the detector with the card's other settings (layers) on the ShapesWorld *validation*
split (held-out seed + 1: never the test split the README reports), picks the largest eps at
which at most `rate` of the correct captions get any word flagged, reports the recall on the
foils at that eps and at the paper's eps, and with `--write` stores the eps as the card's
recommended threshold (`clip4dm.json`) with the measurements under `calibration`.
"""

from __future__ import annotations

import argparse
import json

from feedback import MisalignmentDetector
from feedback.eval.calibration import calibrate_threshold
from feedback.registry import shipped_model
from shapesworld import HELD_OUT_SEED
from shapesworld.benchmark import load_shapes_foil

VALIDATION_SEED = HELD_OUT_SEED + 1


def main(model: str, n: int, rate: float, write: bool) -> dict:
    det = MisalignmentDetector.from_pretrained(model)
    samples = list(load_shapes_foil(n=n, seed=VALIDATION_SEED))
    reports = det.detect([s.image for s in samples], [s.caption for s in samples], progress=True)
    cal = calibrate_threshold(samples, reports, rate=rate)
    result = {**cal.to_dict(), "layers": det.config.layers, "split_seed": VALIDATION_SEED}
    print(json.dumps(result, indent=2))
    if write:
        card_path = shipped_model(model).path / "clip4dm.json"
        card = json.loads(card_path.read_text())
        card["recommended"]["threshold"] = cal.threshold
        card["calibration"] = result
        card_path.write_text(json.dumps(card, indent=2) + "\n")
        print(f"wrote {card_path}")
    return result


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="shapes-tiny")
    p.add_argument("--n", type=int, default=1000, help="foils (and as many correct captions)")
    p.add_argument("--rate", type=float, default=0.1, help="target false-flag rate")
    p.add_argument("--write", action="store_true", help="store the eps in the model card")
    a = p.parse_args()
    main(a.model, a.n, a.rate, a.write)
