"""transformers `CLIPModel`: hub ids and local `save_pretrained` folders with their tokenizer.

Works with any attention implementation (transformers 5's default sdpa returns no attention
maps): the early layers run through the stock modules, and the last K are recomputed from the
layers' own weights with explicit probabilities.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from ..errors import ModelLoadError, short_reason
from .base import Backend, BlockView, causal_mask


class TransformersBackend(Backend):
    """Wrap a `CLIPModel`, its tokenizer and image processor."""

    def __init__(self, model, tokenizer, image_processor, name: str = "transformers"):
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.name = name
        tm = model.text_model
        self.text = tm
        self.layers = tm.encoder.layers
        self.num_text_layers = len(self.layers)
        self.context_length = int(model.config.text_config.max_position_embeddings)
        self.eos_token_id = (
            getattr(tm, "eos_token_id", None) or model.config.text_config.eos_token_id
        )
        self._count_cache: dict[str, int] = {}

    @classmethod
    def load(
        cls, name: str, *, device="cpu", dtype: torch.dtype = torch.float32
    ) -> TransformersBackend:
        from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

        try:
            model = CLIPModel.from_pretrained(name, dtype=dtype).to(device)
        except Exception as e:
            raise ModelLoadError(
                f"cannot load transformers CLIPModel {name!r}: {short_reason(e)}"
            ) from e
        try:
            tokenizer = AutoTokenizer.from_pretrained(name)
        except Exception as e:
            raise ModelLoadError(
                f"{name!r} has no usable CLIP tokenizer files (vocab.json + "
                f"merges.txt or tokenizer.json): {short_reason(e)}"
            ) from e
        local = Path(name)
        if local.is_dir() and not (local / "preprocessor_config.json").exists():
            # A bare save_pretrained(model) folder: CLIP's standard preprocessing at the
            # model's own resolution.
            size = model.config.vision_config.image_size
            processor = CLIPImageProcessor(
                size={"shortest_edge": size}, crop_size={"height": size, "width": size}
            )
        else:
            try:
                processor = CLIPImageProcessor.from_pretrained(name)
            except Exception as e:
                raise ModelLoadError(
                    f"cannot load the image processor of {name!r}: {short_reason(e)}"
                ) from e
        return cls(model, tokenizer, processor, name=name)

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        px = self.image_processor(images=images, return_tensors="pt")["pixel_values"]
        return px.to(self.device, self.dtype)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            out = self.model.get_image_features(pixel_values=pixels)
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        enc = self.tokenizer(
            texts,
            padding="max_length",
            truncation=True,
            max_length=self.context_length,
            return_tensors="pt",
        )
        return enc["input_ids"].to(self.device)

    def count_tokens(self, words: list[str]) -> list[int]:
        missing = [w for w in dict.fromkeys(words) if w not in self._count_cache]
        if missing:
            ids = self.tokenizer(missing, add_special_tokens=False)["input_ids"]
            self._count_cache.update({w: len(i) for w, i in zip(missing, ids)})
        return [self._count_cache[w] for w in words]

    def eot_positions(self, ids: torch.Tensor) -> torch.Tensor:
        # Same rule as CLIPTextModel: legacy configs (eos id 2) pool at the largest id.
        if self.eos_token_id == 2:
            return ids.argmax(dim=-1)
        return (ids == self.eos_token_id).int().argmax(dim=-1)

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        return self.text.embeddings(input_ids=ids)

    def run_blocks(self, x: torch.Tensor, start: int, end: int) -> torch.Tensor:
        n = x.shape[1]
        mask = causal_mask(n, x.device, x.dtype)[None, None].expand(x.shape[0], 1, n, n)
        for layer in self.layers[start:end]:
            out = layer(x, mask)
            x = out[0] if isinstance(out, tuple) else out
        return x

    def block(self, index: int) -> BlockView:
        layer = self.layers[index]
        attn = layer.self_attn

        def qkv(h):
            return attn.q_proj(h), attn.k_proj(h), attn.v_proj(h)

        return BlockView(
            layer.layer_norm1, qkv, attn.out_proj, layer.layer_norm2, layer.mlp, attn.num_heads
        )

    def text_head(self, x_eot: torch.Tensor) -> torch.Tensor:
        return self.model.text_projection(self.text.final_layer_norm(x_eot))

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            out = self.model.get_text_features(input_ids=ids)
        return out if isinstance(out, torch.Tensor) else out.pooler_output
