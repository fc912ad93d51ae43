"""Genuine diffusers pipelines of every family the loop wraps, built tiny from configs with
random weights (seeded; CPU; no download). A CLIP tokenizer stands in for the T5/Gemma
tokenizer slots unless a test passes its own (see `unigram_tokenizer`)."""

from __future__ import annotations

import torch

FAMILIES = ("sd", "sdxl", "sd3", "flux", "pixart", "sana")


def clip_text(hidden: int = 32, projection: bool = False, layers: int = 1, seed: int = 0):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    cfg = CLIPTextConfig(
        hidden_size=hidden,
        intermediate_size=37,
        num_hidden_layers=layers,
        num_attention_heads=4,
        vocab_size=49408,
        max_position_embeddings=77,
        projection_dim=hidden,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )
    cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    return cls(cfg).eval()


def t5(d_model: int = 32, vocab: int = 49408, seed: int = 0):
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    return T5EncoderModel(
        T5Config(vocab_size=vocab, d_model=d_model, d_ff=37, num_layers=1, num_heads=4, d_kv=8)
    ).eval()


def vae(latent: int = 4, **kw):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        block_out_channels=(4,),
        layers_per_block=1,
        latent_channels=latent,
        norm_num_groups=1,
        **kw,
    ).eval()


def unet(**kw):
    """A tiny SD-style UNet (cross-attention at the second level), seeded."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        **kw,
    ).eval()


def build(family: str, tok, tok2=None, t5_tok=None, t5_vocab: int = 49408):
    """A tiny `family` pipeline. `tok`: a CLIP tokenizer (SD-style); `tok2`: SDXL's second one
    (defaults to `tok`); `t5_tok`: the tokenizer for T5/Gemma slots (defaults to `tok`)."""
    import diffusers as d

    tok2 = tok2 or tok
    t5_tok = t5_tok or tok
    if family == "sd":
        pipe = d.StableDiffusionPipeline(
            vae=vae(),
            text_encoder=clip_text(),
            tokenizer=tok,
            unet=unet(cross_attention_dim=32, attention_head_dim=8),
            scheduler=d.DDIMScheduler(clip_sample=False),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    elif family == "sdxl":
        pipe = d.StableDiffusionXLPipeline(
            vae=vae(),
            text_encoder=clip_text(),
            text_encoder_2=clip_text(projection=True, seed=1),
            tokenizer=tok,
            tokenizer_2=tok2,
            unet=unet(
                attention_head_dim=(2, 4),
                use_linear_projection=True,
                addition_embed_type="text_time",
                addition_time_embed_dim=8,
                projection_class_embeddings_input_dim=80,  # 6 * 8 + pooled width 32
                cross_attention_dim=64,  # 32 + 32: both encoders joined on the features
            ),
            scheduler=d.EulerDiscreteScheduler(),
        )
    elif family == "sd3":
        torch.manual_seed(0)
        transformer = d.SD3Transformer2DModel(
            sample_size=16,
            patch_size=1,
            in_channels=4,
            num_layers=1,
            attention_head_dim=8,
            num_attention_heads=4,
            caption_projection_dim=32,
            joint_attention_dim=32,
            pooled_projection_dim=32,  # CLIP-L + CLIP-G pooled (16 + 16)
            out_channels=4,
        )
        pipe = d.StableDiffusion3Pipeline(
            scheduler=d.FlowMatchEulerDiscreteScheduler(),
            vae=vae(4, shift_factor=0.0),
            text_encoder=clip_text(16, projection=True),
            tokenizer=tok,
            text_encoder_2=clip_text(16, projection=True, seed=1),
            tokenizer_2=tok2,
            text_encoder_3=t5(32, t5_vocab),
            tokenizer_3=t5_tok,
            transformer=transformer,
        )
    elif family == "flux":
        torch.manual_seed(0)
        transformer = d.FluxTransformer2DModel(
            patch_size=1,
            in_channels=4,
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=32,
            pooled_projection_dim=32,
            axes_dims_rope=[4, 4, 8],
        )
        pipe = d.FluxPipeline(
            scheduler=d.FlowMatchEulerDiscreteScheduler(),
            vae=vae(1, shift_factor=0.0),
            text_encoder=clip_text(),
            tokenizer=tok,
            text_encoder_2=t5(32, t5_vocab),
            tokenizer_2=t5_tok,
            transformer=transformer,
        )
    elif family == "pixart":
        torch.manual_seed(0)
        transformer = d.PixArtTransformer2DModel(
            sample_size=32,
            num_layers=1,
            patch_size=2,
            attention_head_dim=8,
            num_attention_heads=3,
            caption_channels=32,
            in_channels=4,
            cross_attention_dim=24,
            out_channels=8,
            attention_bias=True,
            activation_fn="gelu-approximate",
            num_embeds_ada_norm=1000,
            norm_type="ada_norm_single",
            norm_elementwise_affine=False,
            norm_eps=1e-6,
        )
        pipe = d.PixArtSigmaPipeline(
            tokenizer=t5_tok,
            text_encoder=t5(32, t5_vocab),
            vae=vae(4),
            scheduler=d.DDIMScheduler(),
            transformer=transformer,
        )
    elif family == "sana":
        from transformers import Gemma2Config, Gemma2Model

        torch.manual_seed(0)
        transformer = d.SanaTransformer2DModel(
            patch_size=1,
            in_channels=4,
            out_channels=4,
            num_layers=1,
            num_attention_heads=2,
            attention_head_dim=4,
            num_cross_attention_heads=2,
            cross_attention_head_dim=4,
            cross_attention_dim=8,
            caption_channels=8,
            sample_size=32,
        )
        torch.manual_seed(0)
        dc = d.AutoencoderDC(
            in_channels=3,
            latent_channels=4,
            attention_head_dim=2,
            encoder_block_types=("ResBlock", "EfficientViTBlock"),
            decoder_block_types=("ResBlock", "EfficientViTBlock"),
            encoder_block_out_channels=(8, 8),
            decoder_block_out_channels=(8, 8),
            encoder_qkv_multiscales=((), (5,)),
            decoder_qkv_multiscales=((), (5,)),
            encoder_layers_per_block=(1, 1),
            decoder_layers_per_block=(1, 1),
            downsample_block_type="conv",
            upsample_block_type="interpolate",
            decoder_norm_types="rms_norm",
            decoder_act_fns="silu",
            scaling_factor=0.41407,
        ).eval()
        torch.manual_seed(0)
        gemma = Gemma2Model(
            Gemma2Config(
                head_dim=16,
                hidden_size=8,
                intermediate_size=16,
                num_attention_heads=2,
                num_hidden_layers=1,
                num_key_value_heads=2,
                vocab_size=t5_vocab,
                max_position_embeddings=512,
            )
        ).eval()
        pipe = d.SanaPipeline(
            tokenizer=t5_tok,
            text_encoder=gemma,
            vae=dc,
            transformer=transformer,
            scheduler=d.FlowMatchEulerDiscreteScheduler(shift=7.0),
        )
    else:
        raise ValueError(family)
    pipe.set_progress_bar_config(disable=True)
    return pipe


#: Call arguments that make each tiny pipeline produce 32 px images in two steps.
CALL: dict[str, dict] = {
    "sd": dict(guidance_scale=3.0),
    "sdxl": dict(guidance_scale=3.0),
    "sd3": dict(max_sequence_length=32),
    "flux": dict(max_sequence_length=32),
    "pixart": dict(max_sequence_length=32, use_resolution_binning=False),
    "sana": dict(
        max_sequence_length=32, use_resolution_binning=False, complex_human_instruction=None
    ),
}


def call_kwargs(family: str, **extra) -> dict:
    return {**dict(num_inference_steps=2, height=32, width=32), **CALL[family], **extra}


def unigram_tokenizer(folder, captions):
    """A sentencepiece-style fast tokenizer (a `tokenizers` Unigram model with the "▁"
    metaspace, as T5's) whose pieces are the captions' words scored by their frequency plus
    every single character as a fallback, so unseen words split into several pieces. (Built
    from counts: `UnigramTrainer` on so small a corpus keeps single characters only.) Saved
    as a transformers folder and loaded back: pad 0, "</s>" 1 appended, unk 2, like T5."""
    import math
    import string
    from collections import Counter

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from tokenizers.processors import TemplateProcessing
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    words = Counter(w for c in captions for w in c.split())
    total = sum(words.values())
    chars = sorted({ch for c in captions for ch in c.replace(" ", "")} | set(string.ascii_letters))
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -12.0)]
    vocab += [("▁" + w, math.log(n / total)) for w, n in words.most_common()]
    vocab += [(ch, -14.0) for ch in chars] + [("▁" + ch, -13.0) for ch in chars]
    seen, pieces = set(), []
    for p, sc in vocab:
        if p not in seen:
            seen.add(p)
            pieces.append((p, sc))
    tk = Tokenizer(models.Unigram(pieces, unk_id=2))
    tk.normalizer = normalizers.NFKC()
    tk.pre_tokenizer = pre_tokenizers.Metaspace()
    tk.decoder = decoders.Metaspace()
    tk.post_processor = TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tk, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )
    fast.model_max_length = 512
    fast.save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)
