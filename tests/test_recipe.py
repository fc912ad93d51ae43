"""The tiny-CLIP recipe runs under `accelerate launch`, checkpoints, resumes and exports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from feedback import MisalignmentDetector

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "train_shapes_clip.py"
SMALL = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 16, "head_width": 8, "patch_size": 8},
    "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 2},
}


def _launch(out, *extra):
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--cpu",
        "--num_processes",
        "1",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        str(RECIPE),
        "--output-dir",
        str(out),
        "--batch-size",
        "4",
        "--foils-per-image",
        "2",
        "--save-every",
        "2",
        "--export-every",
        "2",
        "--model-cfg",
        json.dumps(SMALL),
        *extra,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow
def test_recipe_smoke_resume_and_export(tmp_path):
    out = tmp_path / "run"
    _launch(out, "--steps", "2")
    assert json.loads((out / "checkpoint" / "step.json").read_text())["step"] == 2
    _launch(out, "--steps", "4", "--resume")
    assert json.loads((out / "checkpoint" / "step.json").read_text())["step"] == 4
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["steps"] == 4 and cfg["model_cfg"] == SMALL
    summary = json.loads((out / "export" / "training.json").read_text())
    assert summary["steps"] == 4
    det = MisalignmentDetector.from_pretrained(str(out / "export"), layers=2)
    from shapesworld import foil_set

    ex = foil_set(1)[0]
    rep = det(ex.image(), ex.foil.foil)
    assert len(rep.words) == len(ex.foil.foil.split())
