"""transformers `CLIPModel`: hub ids and local `save_pretrained` folders with their tokenizer.

Works with any attention implementation (transformers 5's default sdpa returns no attention
maps): the early layers run through the stock modules, and the last K are recomputed from the
layers' own weights with explicit probabilities.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from ..alignment import tokenizer_spans
from ..errors import ModelLoadError, OfflineError, short_reason
from ..hub import offline_if_unreachable, offline_message
from ..pixels import PixelTransform
from .base import Backend, BlockView, causal_mask

_TOKENIZER_FILES = ("tokenizer.json", "vocab.json + merges.txt")


def _check_tokenizer_files(folder: Path) -> None:
    has_fast = (folder / "tokenizer.json").is_file()
    has_bpe = (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()
    if not (has_fast or has_bpe):
        raise ModelLoadError(
            f"{folder} holds a CLIP model but no tokenizer: save the tokenizer beside it "
            f"(tokenizer.save_pretrained) so the folder has {' or '.join(_TOKENIZER_FILES)}"
        )


class TransformersBackend(Backend):
    """Wrap a `CLIPModel`, its tokenizer and image processor."""

    def __init__(self, model, tokenizer, image_processor, name: str = "transformers"):
        # A lent model keeps its mode and requires_grad; `load` freezes what it loads itself.
        self.model = model
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

    @classmethod
    def load(
        cls, name: str, *, device="cpu", dtype: torch.dtype = torch.float32
    ) -> TransformersBackend:
        from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel
        from transformers.utils import logging as hf_logging

        local = Path(name).expanduser()
        if local.is_dir():
            _check_tokenizer_files(local)
        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # no "Loading weights" bar on every call
        try:
            with offline_if_unreachable() as offline:
                try:
                    model = CLIPModel.from_pretrained(name, dtype=dtype).to(device)
                except Exception as e:
                    if offline and not local.is_dir():
                        raise OfflineError(offline_message(f"transformers model {name!r}")) from e
                    raise ModelLoadError(
                        f"cannot load transformers CLIPModel {name!r}: {short_reason(e)}"
                    ) from e
                try:
                    tokenizer = AutoTokenizer.from_pretrained(name)
                except Exception as e:
                    raise ModelLoadError(
                        f"{name!r} has no usable CLIP tokenizer ({' or '.join(_TOKENIZER_FILES)}"
                        f" could not be read): {short_reason(e)}"
                    ) from e
        finally:
            if bars:
                hf_logging.enable_progress_bar()
        if getattr(tokenizer, "vocab_size", 0) < 256 or tokenizer.eos_token_id is None:
            raise ModelLoadError(
                f"{name!r}: the tokenizer that loaded is not a CLIP BPE tokenizer "
                f"({type(tokenizer).__name__}, no end-of-text token or vocabulary)"
            )
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
        return cls(model.eval().requires_grad_(False), tokenizer, processor, name=name)

    def pixel_transform(self) -> PixelTransform:
        p = self.image_processor
        size = p.size.get("shortest_edge") or min(p.size.get("height"), p.size.get("width"))
        crop = (p.crop_size["height"], p.crop_size["width"]) if p.do_center_crop else (size, size)
        interp = {2: "bilinear", 3: "bicubic", 0: "nearest"}.get(int(p.resample), "bicubic")
        return PixelTransform(int(size), crop, tuple(p.image_mean), tuple(p.image_std), interp)

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        px = self.image_processor(images=images, return_tensors="pt")["pixel_values"]
        return px.to(self.device, self.image_dtype)

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

    @property
    def image_dtype(self) -> torch.dtype:
        return self.model.vision_model.embeddings.patch_embedding.weight.dtype

    @property
    def text_dtype(self) -> torch.dtype:
        return self.text.embeddings.token_embedding.weight.dtype

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        return tokenizer_spans(self.tokenizer, text)

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
