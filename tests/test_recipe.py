"""The tiny-CLIP recipe runs under `accelerate launch`, checkpoints, resumes and exports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from feedback import MisalignmentDetector

RECIPE = "shapesworld.build.train_shapes_clip"  # run as a module (`-m`), as documented
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
        "-m",
        RECIPE,
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


@pytest.mark.slow
def test_t2i_recipe_writes_a_stock_pipeline_and_continues(tmp_path):
    import torch
    from diffusers import StableDiffusionPipeline

    from shapesworld.build.train_shapes_t2i import main as train_t2i
    from shapesworld.build.train_shapes_t2i import parse_args as t2i_args

    out = tmp_path / "t2i"
    args = ["--output-dir", str(out), "--vae-steps", "3", "--unet-steps", "3", "--batch-size", "4"]
    first = train_t2i(t2i_args(args + ["--max-minutes", "0", "--export-every", "0"]))
    assert first["unet_steps"] == 3 and first["vae_steps"] == 3
    pipe = StableDiffusionPipeline.from_pretrained(out / "pipeline", local_files_only=True)
    assert pipe.tokenizer.model_max_length == 32  # the shapes-tiny text tower's context
    # the text encoder is shapes-tiny's frozen text tower: same text features as the detector
    from feedback import MisalignmentDetector

    det = MisalignmentDetector.from_pretrained("shapes-tiny")
    ids = pipe.tokenizer(["a red circle"], padding="max_length", return_tensors="pt").input_ids
    hf = pipe.text_encoder(ids).last_hidden_state[0, : int(ids.argmax()) + 1]
    oc = det.backend.model
    x = oc.token_embedding(ids) + oc.positional_embedding
    x = oc.ln_final(oc.transformer(x, attn_mask=oc.attn_mask))[0, : int(ids.argmax()) + 1]
    assert torch.allclose(hf.float(), x.float(), atol=2e-2)  # fp16 on disk
    again = train_t2i(t2i_args(args + ["--max-minutes", "0", "--init-from", str(out / "pipeline")]))
    assert again["unet_steps"] == 3 and "vae_steps" in again
    card = json.loads((out / "pipeline" / "training.json").read_text())
    assert card["unet_steps_total"] == 6


@pytest.mark.slow
def test_recipe_two_ranks_stay_identical(tmp_path):
    """DDP must synchronize gradients: after a few steps on different data per rank, both
    ranks hold the same weights (they diverged when the recipe forwarded the unwrapped model)."""
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += ["-m", RECIPE, "--output-dir", str(out), "--batch-size", "4", "--foils-per-image", "2"]
    cmd += ["--steps", "3", "--save-every", "100", "--export-every", "100", "--threads", "1"]
    cmd += ["--model-cfg", json.dumps(SMALL), "--max-minutes", "30"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert sorted(r["process_index"] for r in runs) == [0, 1]
    assert all(r["num_processes"] == 2 and r["steps"] == 3 for r in runs)
    assert runs[0]["weights_digest"] == runs[1]["weights_digest"]


@pytest.mark.slow
def test_generated_pool_resumes_and_fine_tunes_the_detector(tmp_path):
    """The pool recipe writes finished parts and resumes; the CLIP recipe fine-tunes the shipped
    detector on it (the exported weights move away from the shipped ones)."""
    import numpy as np
    import torch
    from safetensors.torch import load_file

    from shapesworld.build.generate_shapes_pool import PoolConfig
    from shapesworld.build.generate_shapes_pool import main as make_pool
    from shapesworld.generated import load_pool

    pool = tmp_path / "pool"
    cfg = PoolConfig(str(pool), parts=2, prompts_per_part=2, images_per_prompt=2, steps=2)
    first = make_pool(cfg)
    assert first["images"] == 8
    images, labels = load_pool(pool)
    assert images.shape == (8, 32, 32, 3) and len(labels) == 8
    # a run killed inside part 1 (its labels never written) redoes only that part, identically
    (pool / "part-00001.jsonl").unlink()
    again = make_pool(cfg)
    assert again["images"] == 4
    images2, labels2 = load_pool(pool)
    assert np.array_equal(images, images2) and labels == labels2

    shipped = Path(__file__).resolve().parents[1] / "shapesworld" / "weights" / "shapes-tiny"
    out = tmp_path / "ft"
    _launch(
        out,
        "--steps",
        "2",
        "--init-from",
        str(shipped),
        "--generated-pool",
        str(pool),
        "--lr",
        "1e-3",
        "--warmup",
        "1",
    )
    summary = json.loads((out / "export" / "training.json").read_text())
    assert summary["init_from"] == str(shipped) and summary["steps"] == 2
    a = load_file(shipped / "open_clip_model.safetensors")
    b = load_file(out / "export" / "open_clip_model.safetensors")
    assert a.keys() == b.keys()
    moved = [k for k in a if not torch.equal(a[k], b[k])]
    assert "visual.conv1.weight" in moved
    MisalignmentDetector.from_pretrained(str(out / "export"))  # loads as a detector
