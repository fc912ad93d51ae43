"""open_clip models: built-in names + pretrained tags, `hf-hub:` ids, `local-dir:` folders."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import ModelLoadError, OfflineError, short_reason
from ..hub import offline_if_unreachable, offline_message
from ..pixels import PixelTransform
from ..words import bpe_token_spans
from .base import Backend, BlockView

#: Weight files open_clip reads from a local folder, in its order of preference; failing
#: those, any other *.safetensors, *.bin or *.pth file in the folder.
OPEN_CLIP_WEIGHT_FILES = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin",
    "open_clip_pytorch_model.pth",
    "model.safetensors",
    "pytorch_model.bin",
    "pytorch_model.pth",
    "model.pth",
)
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth")


def check_open_clip_folder(folder: Path) -> None:
    """Refuse a folder open_clip would silently load with random weights."""
    if not (folder / "open_clip_config.json").is_file():
        raise ModelLoadError(f"{folder}: no open_clip_config.json")
    if not any(f.suffix in _WEIGHT_SUFFIXES for f in folder.iterdir() if f.is_file()):
        raise ModelLoadError(
            f"{folder} has an open_clip config but no weights open_clip reads (looked for "
            f"{', '.join(OPEN_CLIP_WEIGHT_FILES)} or any *.safetensors / *.bin / *.pth); "
            "refusing to run with random weights"
        )


class OpenClipBackend(Backend):
    """A CLIP-style open_clip model (causal text transformer pooled at EOT).

    Use `OpenClipBackend.load(name, pretrained)` or wrap an existing model with
    `OpenClipBackend(model, preprocess, tokenizer)`.
    """

    def __init__(self, model: torch.nn.Module, preprocess, tokenizer, name: str = "open_clip"):
        # A lent model keeps its mode and requires_grad; `load` freezes what it loads itself.
        self.model = model
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
        what = f"{name}" + (f" (pretrained={pretrained})" if pretrained else "")
        if name.startswith("local-dir:"):
            check_open_clip_folder(Path(name[len("local-dir:") :]).expanduser())
        needs_hub = name.startswith("hf-hub:") or (
            pretrained is not None and not Path(pretrained).expanduser().is_file()
        )
        with offline_if_unreachable() as offline:
            try:
                if name.startswith("hf-hub:"):
                    # open_clip only warns and keeps random weights when an hf-hub repo's
                    # weights cannot be fetched: fetch them first so that this fails instead.
                    from open_clip.pretrained import download_pretrained_from_hf

                    download_pretrained_from_hf(name[len("hf-hub:") :])
                model, _, preprocess = open_clip.create_model_and_transforms(
                    name, pretrained=pretrained, device=device, precision=precision
                )
                tokenizer = open_clip.get_tokenizer(name)
            except Exception as e:  # open_clip raises many types; say what was asked for
                if needs_hub and offline:
                    raise OfflineError(offline_message(f"open_clip model {what}")) from e
                raise ModelLoadError(
                    f"cannot load open_clip model {what}: {short_reason(e)}"
                ) from e
        return cls(model.eval().requires_grad_(False), preprocess, tokenizer, name=name)

    def pixel_transform(self) -> PixelTransform:
        from torchvision import transforms as T

        resize, crop, mean, std, interp = None, None, None, None, "bicubic"
        for t in getattr(self._preprocess, "transforms", []):
            if isinstance(t, T.Resize):
                size = t.size if isinstance(t.size, int) else min(t.size)
                resize = int(size)
                interp = {"bilinear": "bilinear", "nearest": "nearest"}.get(
                    t.interpolation.value, "bicubic"
                )
            elif isinstance(t, T.CenterCrop):
                crop = tuple(int(v) for v in t.size)
            elif isinstance(t, T.Normalize):
                mean, std = tuple(t.mean), tuple(t.std)
        if resize is None or crop is None or mean is None:
            raise ModelLoadError(
                f"{self.name}: cannot read Resize/CenterCrop/Normalize from its preprocessing; "
                "pass PIL images instead of tensors"
            )
        return PixelTransform(resize, crop, mean, std, interp)

    @property
    def image_dtype(self) -> torch.dtype:
        # open_clip's mixed precision keeps embeddings and norms in fp32 and casts the
        # matmul weights: the patch convolution's dtype is what the pixels must be.
        conv = getattr(getattr(self.model, "visual", None), "conv1", None)
        return conv.weight.dtype if conv is not None else self.text_dtype

    @property
    def text_dtype(self) -> torch.dtype:
        get = getattr(self.text.transformer, "get_cast_dtype", None)
        return get() if get is not None else self.blocks[0].attn.in_proj_weight.dtype

    # images
    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        x = torch.stack([self._preprocess(im) for im in images])
        return x.to(self.device, self.image_dtype)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.model.encode_image(pixels)

    # text
    def tokenize(self, texts: list[str]) -> torch.Tensor:
        return self.tokenizer(texts, context_length=self.context_length).to(self.device)

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        tok = self.tokenizer
        clean = getattr(tok, "clean_fn", None)
        cleaned = clean(text) if clean is not None else " ".join(text.split()).lower()
        pieces = [tok.decoder[i] for i in tok.encode(text)]
        return bpe_token_spans(text, cleaned, pieces, tok.byte_decoder)

    def eot_positions(self, ids: torch.Tensor) -> torch.Tensor:
        return ids.argmax(dim=-1)

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        n = ids.shape[1]
        dt = self.text_dtype
        return self.text.token_embedding(ids).to(dt) + self.text.positional_embedding[:n].to(dt)

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
