"""LoRA adapters on a diffusers UNet's attention (peft), saved as stock diffusers LoRA files."""

from __future__ import annotations

from pathlib import Path

import torch

#: The attention projections LoRA adapts (self- and cross-attention), as in diffusers' LoRA
#: training examples.
TARGET_MODULES = ("to_q", "to_k", "to_v", "to_out.0")


def add_unet_lora(unet, rank: int = 4, alpha: float | None = None, seed: int = 0) -> list:
    """Freeze `unet` and add a LoRA adapter of `rank` to its attention projections.

    Returns the trainable parameters (the adapter's only). The adapter starts as the identity
    (LoRA's B matrices are zero), so the pipeline's output is unchanged until it is trained;
    `seed` fixes the A matrices so that every rank of a data-parallel run starts equal.
    """
    from peft import LoraConfig

    unet.requires_grad_(False)
    cfg = LoraConfig(
        r=rank,
        lora_alpha=alpha if alpha is not None else rank,
        init_lora_weights="gaussian",
        target_modules=list(TARGET_MODULES),
    )
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        unet.add_adapter(cfg)
    finally:
        torch.random.set_rng_state(state)
    return [p for p in unet.parameters() if p.requires_grad]


def lora_state(unet) -> dict[str, torch.Tensor]:
    """The adapter's weights in diffusers' LoRA naming."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    return convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """A short hash of named weights (ranks of one data-parallel run must agree)."""
    import hashlib

    h = hashlib.sha256()
    for name, t in sorted(state.items()):
        h.update(name.encode())
        h.update(t.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def lora_digest(unet) -> str:
    """A short hash of the adapter's weights."""
    return state_digest(lora_state(unet))


def save_lora(unet, directory: str | Path) -> Path:
    """Write `pytorch_lora_weights.safetensors` into `directory`: what
    `StableDiffusionPipeline.load_lora_weights(directory)` reads."""
    from diffusers import StableDiffusionPipeline

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    layers = {k: v.detach().float().cpu().contiguous() for k, v in lora_state(unet).items()}
    StableDiffusionPipeline.save_lora_weights(directory, unet_lora_layers=layers)
    return directory / "pytorch_lora_weights.safetensors"
