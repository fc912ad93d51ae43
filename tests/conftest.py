"""Tiny models built in the tests (fixed seeds, CPU): no download, no shipped weights needed."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

TINY_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 4},
}


def make_open_clip(seed: int = 0, cfg: dict = TINY_CFG):
    import open_clip

    torch.manual_seed(seed)
    model = open_clip.model.CLIP(**cfg).eval()
    # Random init leaves attention nearly uniform; sharpen it so tests see real structure.
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2:
                p.mul_(3.0)
    return model


def save_open_clip_dir(model, folder, cfg: dict = TINY_CFG):
    folder.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()},
        folder / "open_clip_model.safetensors",
    )
    pre = {
        "size": cfg["vision_cfg"]["image_size"],
        "mean": [0.48145466, 0.4578275, 0.40821073],
        "std": [0.26862954, 0.26130258, 0.27577711],
        "interpolation": "bicubic",
        "resize_mode": "shortest",
    }
    (folder / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": cfg, "preprocess_cfg": pre})
    )
    return folder


@pytest.fixture(scope="session")
def tiny_open_clip_dir(tmp_path_factory):
    return save_open_clip_dir(make_open_clip(), tmp_path_factory.mktemp("oc") / "tiny")


@pytest.fixture(scope="session")
def tiny_hf_dir(tmp_path_factory):
    """A transformers CLIPModel folder (eager attention) with CLIP tokenizer files, holding the
    same weights as `tiny_open_clip_dir`."""
    from feedback.convert import save_transformers_twin

    folder = tmp_path_factory.mktemp("hf") / "tiny"
    return save_transformers_twin(make_open_clip(), TINY_CFG, folder, attn_implementation="eager")


@pytest.fixture(scope="session")
def images():
    """A few 32x32 ShapesWorld images with their true captions."""
    import numpy as np

    from shapesworld import describe, render_scene, sample_scene

    rng = np.random.default_rng(0)
    out = []
    for _ in range(6):
        scene = sample_scene(rng)
        out.append((render_scene(scene), describe(scene, rng).text))
    return out


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """No test reaches the network: huggingface_hub runs in offline mode in this process
    (tests that exercise the online path pass their own environment to a subprocess)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def chromium_path() -> str:
    """Debian's chromium for Playwright (no browser download). Missing: a skip here, a
    failure in CI (which must install it, see .ci/run)."""
    import os
    import shutil

    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("CI must install Debian's chromium (see .ci/run)")
        pytest.skip("no chromium on this machine (apt-get install -y chromium)")
    return path


@pytest.fixture(scope="session")
def sd_tokenizers(tmp_path_factory):
    """SD 1.x-style (pads with end-of-text) and SDXL tokenizer_2-style (pads with "!")."""
    from transformers import AutoTokenizer

    from feedback.convert import write_clip_tokenizer

    folder = tmp_path_factory.mktemp("sdtok")
    one = write_clip_tokenizer(folder)
    one.model_max_length = 77
    two = AutoTokenizer.from_pretrained(folder, pad_token="!")
    two.model_max_length = 77
    assert one.pad_token_id != two.pad_token_id
    return {"sd": one, "sdxl_2": two}
