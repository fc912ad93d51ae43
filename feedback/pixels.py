"""Preprocessing image *tensors* on their own device: what a pipeline with
`output_type="pt"` hands over, with no PIL round trip."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .errors import InputError


@dataclass(frozen=True)
class PixelTransform:
    """CLIP-style preprocessing: resize the shortest side to `resize`, center-crop to `crop`
    (height, width), normalize with `mean`/`std` (per channel, on [0, 1] values)."""

    resize: int
    crop: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"

    def __call__(self, images: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """(B, 3, H, W) floats in [0, 1] -> (B, 3, crop_h, crop_w) model input of `dtype`."""
        x = images.float()
        h, w = x.shape[-2:]
        scale = self.resize / min(h, w)
        size = (max(self.crop[0], round(h * scale)), max(self.crop[1], round(w * scale)))
        if (h, w) != size:
            x = F.interpolate(
                x, size=size, mode=self.interpolation, antialias=True, align_corners=False
            ).clamp_(0, 1)
        top = (x.shape[-2] - self.crop[0]) // 2
        left = (x.shape[-1] - self.crop[1]) // 2
        x = x[..., top : top + self.crop[0], left : left + self.crop[1]]
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        return ((x - mean) / std).to(dtype)


def check_image_tensor(images: torch.Tensor, *, allow_nan: bool = False) -> None:
    """A clear error for tensors that are not a (B, 3, H, W) batch of finite [0, 1] floats.

    allow_nan: let non-finite pixels through (a diverged sample under nan_policy="mask" is
    then dropped by its scores, not the whole batch); the range check ignores them.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise InputError(f"image tensor must have shape (B, 3, H, W), got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise InputError(f"image tensor must be float in [0, 1], got {images.dtype}")
    if images.shape[-1] < 1 or images.shape[-2] < 1:
        raise InputError(f"image tensor has no pixels: {tuple(images.shape)}")
    finite = images.isfinite()
    if not bool(finite.all()):
        if not allow_nan:
            raise InputError("image tensor holds NaN or inf")
        images = images[finite]
        if images.numel() == 0:
            return
    lo, hi = float(images.min()), float(images.max())
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise InputError(
            f"image tensor values must lie in [0, 1] (got {lo:.3g}..{hi:.3g}); a diffusers "
            "pipeline gives that with output_type='pt'; map [-1, 1] latents-decoded images "
            "with (x + 1) / 2"
        )
