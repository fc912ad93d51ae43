"""Pieces the LoRA fine-tuning recipes share (`recipes/finetune_*.py`): LoRA on the UNet's
attention saved in the format `pipe.load_lora_weights(dir)` reads, sampling a round of images
with their rewards, the denoising loss, and the round loop itself (`run_rounds`: data
parallel, checkpointed, resumable to the same LoRA)."""

from .lora import add_unet_lora, load_lora_into, lora_digest, lora_state, save_lora
from .rounds import (
    RoundSamples,
    denoising_loss,
    encode_images,
    sample_round,
    training_scheduler,
)
from .trainer import Collected, RoundsConfig, run_rounds

__all__ = [
    "Collected",
    "RoundSamples",
    "RoundsConfig",
    "add_unet_lora",
    "denoising_loss",
    "encode_images",
    "load_lora_into",
    "lora_digest",
    "lora_state",
    "run_rounds",
    "sample_round",
    "save_lora",
    "training_scheduler",
]
