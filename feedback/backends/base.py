"""The small interface every CLIP backend implements, and the attributed text forward.

A backend exposes its text tower as pieces (token embedding, stock blocks, a view of each
block's weights, the head) so one shared forward can run the early layers under `no_grad`
with the model's own (fast, e.g. sdpa) modules and recompute only the last K layers with
explicit attention probabilities that live in the autograd graph.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from PIL import Image


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


@dataclass
class BlockView:
    """A pre-LayerNorm transformer block in a common form.

    qkv: (B, L, W) -> three (B, L, W) projections (unscaled).
    ls_1 / ls_2: layer-scale after attention / MLP (identity when the model has none).
    """

    ln_1: Callable[[torch.Tensor], torch.Tensor]
    qkv: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    out_proj: Callable[[torch.Tensor], torch.Tensor]
    ln_2: Callable[[torch.Tensor], torch.Tensor]
    mlp: Callable[[torch.Tensor], torch.Tensor]
    num_heads: int
    ls_1: Callable[[torch.Tensor], torch.Tensor] = _identity
    ls_2: Callable[[torch.Tensor], torch.Tensor] = _identity


class Backend(ABC):
    """What the detector needs from a CLIP implementation."""

    #: Human-readable model identifier (for reports and errors).
    name: str
    #: Text context length including SOT and EOT.
    context_length: int
    #: Number of text transformer blocks.
    num_text_layers: int
    model: torch.nn.Module

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def image_dtype(self) -> torch.dtype:
        """The dtype pixels must have for the image tower."""
        return next(self.model.parameters()).dtype

    @property
    def text_dtype(self) -> torch.dtype:
        """The dtype of the text tower's hidden states."""
        return next(self.model.parameters()).dtype

    # --- images ---------------------------------------------------------------------------
    @abstractmethod
    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        """RGB PIL images -> (B, 3, H, W) pixel tensor on the model's device and dtype."""

    @abstractmethod
    def pixel_transform(self):
        """The `PixelTransform` equivalent of `preprocess`, for (B, 3, H, W) tensors in [0, 1]."""

    def preprocess_tensor(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) floats in [0, 1] on any device -> model input on the model's device."""
        if not hasattr(self, "_pixel_transform"):
            self._pixel_transform = self.pixel_transform()
        return self._pixel_transform(images.to(self.device), self.image_dtype)

    @abstractmethod
    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, D) image embeddings (not normalised), without autograd."""

    # --- text -----------------------------------------------------------------------------
    @abstractmethod
    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """(B, context_length) token ids with SOT, EOT and padding, truncated to the context."""

    @abstractmethod
    def token_spans(self, text: str) -> list[tuple[int, int]]:
        """[start, end) character span in `text` of every content token (no SOT/EOT) of the
        whole text's untruncated tokenization, in order: the tokenizer's own view of which
        characters each token stands for."""

    @abstractmethod
    def eot_positions(self, ids: torch.Tensor) -> torch.Tensor:
        """(B,) position of the token the model pools the text embedding from."""

    @abstractmethod
    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, L) ids -> (B, L, W) token + position embeddings."""

    @abstractmethod
    def run_blocks(self, x: torch.Tensor, start: int, end: int) -> torch.Tensor:
        """Run stock text blocks [start, end) on (B, L, W) with the causal mask."""

    @abstractmethod
    def block(self, index: int) -> BlockView:
        """A view of text block `index`'s weights."""

    @abstractmethod
    def text_head(self, x_eot: torch.Tensor) -> torch.Tensor:
        """(B, W) final hidden state at EOT -> (B, D) text embedding (final LN, projection)."""

    @abstractmethod
    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        """The model's own full text forward, (B, context) -> (B, D); used to check parity."""


def causal_mask(n: int, device, dtype=torch.float32) -> torch.Tensor:
    return torch.full((n, n), float("-inf"), device=device, dtype=dtype).triu_(1)


def attributed_text_forward(
    backend: Backend, ids: torch.Tensor, eot: torch.Tensor, layers: int
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Text embeddings with the last `layers` blocks' attention probabilities in the graph.

    ids: (B, L) token ids, already cut after the batch's last EOT (the mask is causal and the
        embedding is read at EOT, so later padding cannot influence anything computed here).
    eot: (B,) EOT positions.
    Returns text embeddings (B, D) and, per attributed layer, attention probabilities
    (B, H, L, L) in fp32 — for the very last block only the EOT query row, (B, H, 1, L), since
    no other row of it reaches the embedding. Earlier blocks run without autograd; the first
    attributed layer's probabilities are the leaf where the graph starts, so one backward from
    the similarities covers exactly the last K layers and nothing else.
    """
    n_layers = backend.num_text_layers
    if not 1 <= layers <= n_layers:
        raise ValueError(f"layers must be in [1, {n_layers}] for this model, got {layers}")
    first = n_layers - layers
    with torch.no_grad():
        x = backend.embed_tokens(ids)
        if first > 0:
            x = backend.run_blocks(x, 0, first)
    x = x.detach()
    bsz, n, width = x.shape
    rows = torch.arange(bsz, device=x.device)
    mask = causal_mask(n, x.device)
    key_pos = torch.arange(n, device=x.device)
    attns: list[torch.Tensor] = []
    x_eot = None
    for i in range(first, n_layers):
        blk = backend.block(i)
        h = blk.num_heads
        d = width // h
        q, k, v = blk.qkv(blk.ln_1(x))
        q, k, v = (t.reshape(bsz, n, h, d).transpose(1, 2) for t in (q, k, v))
        last = i == n_layers - 1
        if last:
            q = q[rows, :, eot].unsqueeze(2)  # (B, H, 1, d): only the EOT query matters
            m = torch.where(key_pos[None, :] > eot[:, None], float("-inf"), 0.0)[:, None, None]
        else:
            m = mask
        scores = (q.float() * d**-0.5) @ k.float().transpose(-1, -2) + m
        probs = scores.softmax(dim=-1)
        if not probs.requires_grad:
            probs.requires_grad_(True)
        attns.append(probs)
        o = (probs.to(v.dtype) @ v).transpose(1, 2).reshape(bsz, -1, width)
        o = blk.out_proj(o)
        if last:
            x_eot = x[rows, eot] + blk.ls_1(o[:, 0])
            x_eot = x_eot + blk.ls_2(blk.mlp(blk.ln_2(x_eot)))
        else:
            x = x + blk.ls_1(o)
            x = x + blk.ls_2(blk.mlp(blk.ln_2(x)))
    return backend.text_head(x_eot), attns


def text_forward(backend: Backend, ids: torch.Tensor, eot: torch.Tensor) -> torch.Tensor:
    """(B, L) ids -> (B, D) text embeddings read at `eot`, under the caller's grad mode.

    The one text-tower forward shared by the detector (occlusion, packaging checks) and the
    training recipe. ids may be cut after the batch's last EOT: the mask is causal and the
    embedding is read at EOT, so later padding never changes the result (and costs compute).
    """
    x = backend.run_blocks(backend.embed_tokens(ids), 0, backend.num_text_layers)
    return backend.text_head(x[torch.arange(ids.shape[0], device=ids.device), eot])


def encode_text_fast(backend: Backend, ids: torch.Tensor, eot: torch.Tensor) -> torch.Tensor:
    """`text_forward` without autograd (scoring only)."""
    with torch.no_grad():
        return text_forward(backend, ids, eot)


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine similarity of (B, D) tensors, in fp32."""
    return (F.normalize(a.float(), dim=-1) * F.normalize(b.float(), dim=-1)).sum(-1)
