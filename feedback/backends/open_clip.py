"""open_clip models: built-in names + pretrained tags, `hf-hub:` ids, `local-dir:` folders."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import ModelLoadError, short_reason
from .base import Backend, BlockView


class OpenClipBackend(Backend):
    """A CLIP-style open_clip model (causal text transformer pooled at EOT).

    Use `OpenClipBackend.load(name, pretrained)` or wrap an existing model with
    `OpenClipBackend(model, preprocess, tokenizer)`.
    """

    def __init__(self, model: torch.nn.Module, preprocess, tokenizer, name: str = "open_clip"):
        self.model = model.eval().requires_grad_(False)
        self._preprocess = preprocess
        self.tokenizer = tokenizer
        self.name = name
        # CLIP keeps the text tower on the model itself; CustomTextCLIP keeps it in `.text`.
        text = model if hasattr(model, "token_embedding") else getattr(model, "text", None)
        if text is None or not hasattr(text, "transformer") or not hasattr(text, "token_embedding"):
            raise ModelLoadError(
                f"{name}: only CLIP-style text transformers are supported "
                "(this model's text tower is not an open_clip TextTransformer)"
            )
        pool = getattr(text, "text_pool_type", getattr(text, "pool_type", "argmax"))
        if pool != "argmax" or getattr(text, "attn_mask", None) is None:
            raise ModelLoadError(
                f"{name}: CLIP4DM needs a causal text tower pooled at EOT "
                f"(pool_type 'argmax'); this one uses {pool!r}"
            )
        if not hasattr(tokenizer, "encode"):
            raise ModelLoadError(f"{name}: only open_clip's CLIP BPE tokenizer is supported")
        self.text = text
        self.blocks = text.transformer.resblocks
        for blk in self.blocks:
            if not isinstance(getattr(blk, "attn", None), torch.nn.MultiheadAttention):
                raise ModelLoadError(f"{name}: unsupported text block {type(blk).__name__}")
        self.batch_first = getattr(text.transformer, "batch_first", True)
        self.num_text_layers = len(self.blocks)
        self.context_length = int(text.positional_embedding.shape[0])
        self._count_cache: dict[str, int] = {}

    @classmethod
    def load(
        cls,
        name: str,
        pretrained: str | None = None,
        *,
        device="cpu",
        dtype: torch.dtype = torch.float32,
    ) -> OpenClipBackend:
        import open_clip

        precision = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype]
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                name, pretrained=pretrained, device=device, precision=precision
            )
            tokenizer = open_clip.get_tokenizer(name)
        except Exception as e:  # open_clip raises many types; say what was asked for
            what = f"{name}" + (f" (pretrained={pretrained})" if pretrained else "")
            raise ModelLoadError(f"cannot load open_clip model {what}: {short_reason(e)}") from e
        return cls(model, preprocess, tokenizer, name=name)

    # images
    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        x = torch.stack([self._preprocess(im) for im in images])
        return x.to(self.device, self.dtype)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.model.encode_image(pixels)

    # text
    def tokenize(self, texts: list[str]) -> torch.Tensor:
        return self.tokenizer(texts, context_length=self.context_length).to(self.device)

    def count_tokens(self, words: list[str]) -> list[int]:
        out = []
        for w in words:
            if w not in self._count_cache:
                self._count_cache[w] = len(self.tokenizer.encode(w))
            out.append(self._count_cache[w])
        return out

    def eot_positions(self, ids: torch.Tensor) -> torch.Tensor:
        return ids.argmax(dim=-1)

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        n = ids.shape[1]
        return self.text.token_embedding(ids).to(self.dtype) + self.text.positional_embedding[:n]

    def run_blocks(self, x: torch.Tensor, start: int, end: int) -> torch.Tensor:
        n = x.shape[1]
        mask = self.text.attn_mask[:n, :n].to(x.dtype)
        if not self.batch_first:
            x = x.transpose(0, 1)
        for blk in self.blocks[start:end]:
            x = blk(x, attn_mask=mask)
        return x if self.batch_first else x.transpose(0, 1)

    def block(self, index: int) -> BlockView:
        blk = self.blocks[index]
        attn: torch.nn.MultiheadAttention = blk.attn

        def qkv(h):
            return F.linear(h, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)

        return BlockView(
            blk.ln_1, qkv, attn.out_proj, blk.ln_2, blk.mlp, attn.num_heads, blk.ls_1, blk.ls_2
        )

    def text_head(self, x_eot: torch.Tensor) -> torch.Tensor:
        x = self.text.ln_final(x_eot)
        proj = self.text.text_projection
        return proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.model.encode_text(ids)
