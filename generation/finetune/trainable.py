"""What a recipe trains: LoRA adapters on the UNet's attention, or the whole UNet.

- `lora`: rank-r adapters (peft), saved as `pytorch_lora_weights.safetensors`, which stock
  `pipe.load_lora_weights(dir)` reads. The frozen base policy (the KL anchor) is the same
  UNet with its adapters switched off.
- `full`: every UNet weight, saved as a diffusers UNet folder (`config.json` +
  `diffusion_pytorch_model.safetensors`), which stock `UNet2DConditionModel.from_pretrained(dir)`
  reads. The base policy is a frozen copy taken before training.
"""

from __future__ import annotations

import copy
import weakref
from contextlib import contextmanager
from pathlib import Path

import torch

from .lora import add_unet_lora, lora_state, save_lora, state_digest

MODES = ("lora", "full")
#: The frozen copy of each fully trained UNet (kept outside the module, so it is neither a
#: submodule of the trained model nor in its state dict or optimizer).
_REFERENCES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def make_trainable(unet, mode: str = "lora", *, rank: int = 8, seed: int = 0) -> list:
    """Prepare `unet` for training in `mode` and return the parameters the optimizer steps."""
    if mode == "lora":
        return add_unet_lora(unet, rank=rank, seed=seed)
    if mode == "full":
        ref = copy.deepcopy(unet).requires_grad_(False).eval()
        _REFERENCES[unet] = ref
        unet.requires_grad_(True)
        return list(unet.parameters())
    raise ValueError(f"train mode must be one of {MODES}, got {mode!r}")


def trained_state(unet, mode: str) -> dict[str, torch.Tensor]:
    """The trained weights: the adapter's (diffusers LoRA naming) or the whole UNet's."""
    return lora_state(unet) if mode == "lora" else unet.state_dict()


def trained_digest(unet, mode: str = "lora") -> str:
    """A short hash of the trained weights (ranks of one data-parallel run must agree)."""
    return state_digest(trained_state(unet, mode))


def save_trained(unet, mode: str, directory: str | Path) -> Path:
    """Write what `mode` trained into `directory` (see the module docstring for the format),
    through a temporary folder swapped in whole."""
    directory = Path(directory)
    if mode == "lora":
        return save_lora(unet, directory)
    tmp = directory.with_name(directory.name + ".tmp")
    unet.save_pretrained(tmp, safe_serialization=True)
    if directory.exists():
        import shutil

        shutil.rmtree(directory)
    tmp.rename(directory)
    return directory


def trained_weights_file(directory: str | Path) -> Path | None:
    """The weights file of a recipe's result folder: its LoRA
    (`pytorch_lora_weights.safetensors`) or its UNet's (`diffusion_pytorch_model.safetensors`
    beside `config.json`); None when the folder holds neither."""
    directory = Path(directory)
    lora = directory / "pytorch_lora_weights.safetensors"
    if lora.is_file():
        return lora
    unet = directory / "diffusion_pytorch_model.safetensors"
    if unet.is_file() and (directory / "config.json").is_file():
        return unet
    return None


def load_trained(pipe, directory: str | Path):
    """Load a recipe's result into `pipe` with stock diffusers: a LoRA folder through
    `load_lora_weights`, a UNet folder through `UNet2DConditionModel.from_pretrained`."""
    directory = Path(directory)
    weights = trained_weights_file(directory)
    if weights is not None and weights.name == "pytorch_lora_weights.safetensors":
        pipe.load_lora_weights(str(directory))
        return pipe
    if weights is not None:
        from diffusers import UNet2DConditionModel

        unet = UNet2DConditionModel.from_pretrained(directory)
        pipe.unet = unet.to(device=pipe.device, dtype=pipe.unet.dtype)
        return pipe
    raise FileNotFoundError(
        f"{directory} holds neither a LoRA (pytorch_lora_weights.safetensors) nor a UNet "
        "folder (config.json + diffusion_pytorch_model.safetensors)"
    )


@contextmanager
def reference_policy(unet):
    """The frozen base policy of a trained UNet (DDP-wrapped or not), for a KL anchor: the UNet
    with its LoRA adapters off, or the copy `make_trainable(mode="full")` kept."""
    module = getattr(unet, "module", unet)
    ref = _REFERENCES.get(module)
    if ref is not None:
        yield ref
        return
    module.disable_adapters()
    try:
        yield module
    finally:
        module.enable_adapters()
