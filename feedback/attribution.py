"""The CLIP4DM attribution math, as pure tensor functions.

For each of the last K text layers, `cam = mean_heads(G * A)` with A the attention
probabilities and G = ds/dA, with **no ReLU or clamp** (negative evidence is the signal);
`R = mean over the K layers`; a token's score is `R[eot, token]`.
"""

from __future__ import annotations

import torch


def eot_cam(
    attn: torch.Tensor, grad: torch.Tensor, eot: torch.Tensor, *, relu: bool = False
) -> torch.Tensor:
    """The EOT row of one layer's signed CAM, in fp32.

    attn, grad: (B, H, Q, S) attention probabilities and ds/dA (any dtype). Q is either the
        full sequence (then row `eot[b]` is taken) or 1 (only the EOT query was computed).
    eot: (B,) EOT positions.
    relu: clamp grad * attn at 0 before the head mean, as Chefer et al. do. That is NOT
        CLIP4DM (it discards the negative evidence); it exists only for ablations.
    Returns (B, S) float32: mean over heads of grad * attn at the EOT query.
    """
    b = torch.arange(attn.shape[0], device=attn.device)
    q = eot if attn.shape[2] > 1 else torch.zeros_like(eot)
    a = attn[b, :, q].float()  # (B, H, S)
    g = grad[b, :, q].float()
    cam = g * a
    return (cam.clamp(min=0) if relu else cam).mean(dim=1)


def relevance(cams: list[torch.Tensor]) -> torch.Tensor:
    """Mean of the per-layer EOT-row CAMs: (B, S) float32 token scores R[eot, :]."""
    if not cams:
        raise ValueError("need at least one layer")
    return torch.stack(cams).mean(dim=0)
