"""Pieces the fine-tuning recipes share (`recipes/finetune_*.py`): LoRA on the UNet's
attention saved in the format `pipe.load_lora_weights(dir)` reads (or the whole UNet, saved as
a diffusers UNet folder), sampling a round of images with their rewards, the denoising loss,
validation on a held-apart prompt split, the rewards (`rewards`: a CLIP4DM detector at the
trained pipeline's calibrated eps, F-CLIPScore / region / CLIPScore rewards), the policy
objective (`policy`, with its own `PolicyConfig`), and the round loop itself (`run_rounds`:
takes a pipeline, a prompt source and the recipe's collect step; data parallel,
checkpointed, resumable to the same weights, keeps the best validated round, gives a lent
pipeline back as it found it, returns a `RoundsResult`)."""

from .lora import add_unet_lora, lora_digest, lora_state, save_lora
from .policy import PolicyConfig, group_advantages, policy_objective
from .rewards import CLIP_TIE_BREAK, REWARDS, card_eps, load_detector, make_reward
from .rounds import (
    RoundSamples,
    denoising_loss,
    encode_images,
    sample_round,
    training_scheduler,
)
from .trainable import load_trained, make_trainable, reference_policy, save_trained
from .trainer import Collected, RoundsConfig, RoundsResult, run_rounds
from .validation import Validator, reward_validator

__all__ = [
    "CLIP_TIE_BREAK",
    "Collected",
    "PolicyConfig",
    "REWARDS",
    "RoundSamples",
    "RoundsConfig",
    "RoundsResult",
    "add_unet_lora",
    "card_eps",
    "denoising_loss",
    "encode_images",
    "group_advantages",
    "load_detector",
    "lora_digest",
    "lora_state",
    "load_trained",
    "make_reward",
    "make_trainable",
    "policy_objective",
    "reference_policy",
    "reward_validator",
    "save_trained",
    "Validator",
    "run_rounds",
    "sample_round",
    "save_lora",
    "training_scheduler",
]
