"""Pieces the fine-tuning recipes share (`recipes/finetune_*.py`): LoRA on the UNet's
attention saved in the format `pipe.load_lora_weights(dir)` reads (or the whole UNet, saved as
a diffusers UNet folder), sampling a round of images with their rewards, the denoising loss,
validation on a held-apart prompt split, and the round loop itself (`run_rounds`: takes a
pipeline, a prompt source and the recipe's collect step; data parallel, checkpointed,
resumable to the same weights, keeps the best validated round)."""

from .lora import add_unet_lora, load_lora_into, lora_digest, lora_state, save_lora
from .rounds import (
    RoundSamples,
    denoising_loss,
    encode_images,
    sample_round,
    training_scheduler,
)
from .trainable import load_trained, make_trainable, reference_policy, save_trained
from .trainer import Collected, RoundsConfig, run_rounds
from .validation import Validator, reward_validator

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
    "load_trained",
    "make_trainable",
    "reference_policy",
    "reward_validator",
    "save_trained",
    "Validator",
    "run_rounds",
    "sample_round",
    "save_lora",
    "training_scheduler",
]
