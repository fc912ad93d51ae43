"""Resolve a model string to a backend: the one place that knows model naming schemes.

Accepted, in this order:
- a shipped name (``shapes-tiny``): weights inside the installed package, no network;
- a local directory: a transformers ``save_pretrained`` folder (``config.json`` of a CLIP model
  plus tokenizer files) or an open_clip folder (``open_clip_config.json`` + weights);
- ``hf-hub:org/repo`` or ``local-dir:/path``: open_clip's own schemes;
- an open_clip architecture name (``ViT-B-32``) with a ``pretrained`` tag or checkpoint path;
- ``org/name``: a transformers CLIP on the Hugging Face hub (or in its local cache).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .backends import Backend, OpenClipBackend, TransformersBackend
from .errors import ModelLoadError

#: The detector when none is named: the CLIP that torchmetrics' CLIPScore and most
#: text-to-image evaluations use by default (OpenAI ViT-L/14, transformers format), so the
#: CLIPScore printed beside the words is the number users already compare. The paper's best
#: family is ViT-H/14 (`ViT-H-14` with pretrained `laion2b_s32b_b79k`, 2.5 GB).
DEFAULT_MODEL = "openai/clip-vit-large-patch14"


@dataclass(frozen=True)
class ShippedModel:
    """A model whose weights ship inside the package, with its card's recommended settings."""

    name: str
    path: Path
    backend: str
    recommended: dict = field(default_factory=dict)


def _weights_root() -> Path | None:
    # Find the testbed's weights folder without importing (executing) the testbed package:
    # loading any other model must not pay for, or depend on, ShapesWorld.
    import importlib.util

    spec = importlib.util.find_spec("shapesworld")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "weights"


def _shipped() -> dict[str, ShippedModel]:
    root = _weights_root()
    out = {}
    for d in sorted(root.glob("*")) if root is not None and root.exists() else []:
        card = d / "clip4dm.json"
        if card.exists():
            meta = json.loads(card.read_text())
            out[d.name] = ShippedModel(
                d.name, d, meta.get("backend", "open_clip"), meta.get("recommended", {})
            )
    return out


def shipped_model(name: str) -> ShippedModel:
    """The shipped model `name` (folder, backend, recommended settings)."""
    models = _shipped()
    if name not in models:
        raise ModelLoadError(f"{name!r} is not a shipped model ({', '.join(models) or 'none'})")
    return models[name]


def shipped_models() -> list[str]:
    """Names of the models that ship with the package."""
    return sorted(_shipped())


def recommended_settings(model: str) -> dict:
    """Detector settings recommended by a shipped model's card ({} for other models)."""
    entry = _shipped().get(model)
    return dict(entry.recommended) if entry else {}


DTYPES = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ModelLoadError(f"unknown dtype {dtype!r}; use one of fp32, fp16, bf16")
    return DTYPES[dtype]


def load_backend(
    model: str,
    pretrained: str | None = None,
    *,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = None,
) -> Backend:
    """Load `model` (see the module docstring for the accepted forms) as a Backend."""
    dt = resolve_dtype(dtype)
    if not isinstance(model, str) or not model.strip():
        raise ModelLoadError("model name is empty")
    shipped = _shipped()
    if model in shipped:
        entry = shipped[model]
        backend = (
            OpenClipBackend.load(f"local-dir:{entry.path}", device=device, dtype=dt)
            if entry.backend == "open_clip"
            else TransformersBackend.load(str(entry.path), device=device, dtype=dt)
        )
        backend.name = model  # messages, reports and the app say the shipped name, not a path
        return backend
    path = Path(model).expanduser()
    if path.is_dir():
        if (path / "open_clip_config.json").exists():
            return OpenClipBackend.load(f"local-dir:{path}", device=device, dtype=dt)
        if (path / "config.json").exists():
            return TransformersBackend.load(str(path), device=device, dtype=dt)
        raise ModelLoadError(
            f"{path} is a directory but holds neither a transformers CLIP "
            "(config.json) nor an open_clip model (open_clip_config.json)"
        )
    if model.startswith(("hf-hub:", "local-dir:")):
        return OpenClipBackend.load(model, device=device, dtype=dt)
    import open_clip

    if model in open_clip.list_models():
        if pretrained is None:
            tags = [t for m, t in open_clip.list_pretrained() if m == model]
            raise ModelLoadError(
                f"open_clip model {model!r} needs pretrained weights: pass --pretrained with a "
                f"tag ({', '.join(tags[:8]) or 'none listed'}) or a checkpoint path"
            )
        return OpenClipBackend.load(model, pretrained, device=device, dtype=dt)
    if "/" in model and not path.exists() and model.count("/") == 1 and not model.startswith("."):
        return TransformersBackend.load(model, device=device, dtype=dt)
    raise ModelLoadError(
        f"unknown model {model!r}: not a shipped model ({', '.join(shipped) or 'none installed'}),"
        " a local model directory, an open_clip architecture name, 'hf-hub:org/repo', or a "
        "transformers hub id 'org/name'"
    )
