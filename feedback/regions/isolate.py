"""Isolate regions of image tensors, batched, on the images' own device and dtype.

Three ways, as ReCLIP and GenEval isolate a proposal: "fill" keeps the box and paints the rest
with the image's background colour (the median of its border pixels: on a plain background the
object simply stands alone); "blur" keeps the box sharp and blurs the rest; "crop" cuts the box
out and resizes it to the image's size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .geometry import Box

ISOLATIONS = ("fill", "blur", "crop")


def background_colour(images: torch.Tensor) -> torch.Tensor:
    """(B, 3) median colour of each image's one-pixel border: (B, 3, H, W) -> (B, 3)."""
    top, bottom = images[..., 0, :], images[..., -1, :]
    left, right = images[..., 1:-1, 0], images[..., 1:-1, -1]
    border = torch.cat([top, bottom, left, right], dim=-1)
    if border.dtype not in (torch.float32, torch.float64):
        border = border.float()  # half types: median in fp32
    return border.median(dim=-1).values.to(images.dtype)


def box_masks(boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, 4) boxes in pixels -> (N, 1, H, W) float masks, 1 inside, with fractional
    coverage on the border pixels (so a box between pixels keeps its exact area)."""
    h, w = size
    dev, dt = boxes.device, torch.float32
    b = boxes.to(dt)
    xs = torch.arange(w, device=dev, dtype=dt)
    ys = torch.arange(h, device=dev, dtype=dt)
    cx = (torch.minimum(xs[None] + 1, b[:, 2:3]) - torch.maximum(xs[None], b[:, 0:1])).clamp(0, 1)
    cy = (torch.minimum(ys[None] + 1, b[:, 3:4]) - torch.maximum(ys[None], b[:, 1:2])).clamp(0, 1)
    return (cy[:, :, None] * cx[:, None, :])[:, None]


def _blurred(images: torch.Tensor) -> torch.Tensor:
    h, w = images.shape[-2:]
    sigma = max(1.0, 0.05 * min(h, w))
    k = int(2 * round(2 * sigma) + 1)
    t = torch.arange(k, device=images.device, dtype=torch.float32) - k // 2
    g = torch.exp(-(t**2) / (2 * sigma**2))
    g = (g / g.sum()).to(images.dtype)
    c = images.shape[1]
    x = F.pad(images, (k // 2, k // 2, k // 2, k // 2), mode="replicate")
    x = F.conv2d(x, g.view(1, 1, 1, k).expand(c, 1, 1, k), groups=c)
    return F.conv2d(x, g.view(1, 1, k, 1).expand(c, 1, k, 1), groups=c)


def isolate(
    images: torch.Tensor,
    index: Sequence[int] | torch.Tensor,
    boxes: Sequence[Box] | torch.Tensor,
    mode: str = "fill",
    *,
    fill: torch.Tensor | None = None,
) -> torch.Tensor:
    """One isolated region per (image index, box) pair.

    images: (B, 3, H, W) floats in [0, 1]; index: (N,) which image each box is in; boxes: (N, 4)
        pixels. fill: (B, 3) colours for "fill" (default: `background_colour`).
    Returns (N, 3, H, W) on the images' device and dtype. A zero-area box gives the image's
    fill colour everywhere (the "blank" region: what a phrase scores on nothing).
    """
    if mode not in ISOLATIONS:
        raise ValueError(f"isolation must be one of {ISOLATIONS}, got {mode!r}")
    dev, dt = images.device, images.dtype
    idx = torch.as_tensor(index, device=dev, dtype=torch.long)
    b = torch.as_tensor(boxes, device=dev, dtype=torch.float32).reshape(-1, 4)
    h, w = images.shape[-2:]
    src = images[idx]
    if mode == "crop":
        from torchvision.ops import roi_align

        rois = torch.cat([torch.arange(len(b), device=dev, dtype=torch.float32)[:, None], b], 1)
        out = roi_align(src.float(), rois, output_size=(h, w), aligned=True)
        return out.clamp(0, 1).to(dt)
    m = box_masks(b, (h, w)).to(dt)
    if mode == "fill":
        colours = background_colour(images) if fill is None else fill.to(dev, dt)
        rest = colours[idx][:, :, None, None].expand_as(src)
    else:
        rest = _blurred(images)[idx]
    return src * m + rest * (1 - m)
