"""Convert an open_clip CLIP into a transformers `CLIPModel` folder (same weights, same outputs).

Used to give the shipped open_clip models a transformers twin, to check that both backends
agree, and by the benchmark's reference-style loop (the reference runs transformers CLIP).
transformers ships an equivalent one-off script, not an importable function, hence this one.
"""

from __future__ import annotations

from pathlib import Path

import torch


def write_clip_tokenizer(folder: str | Path):
    """Write CLIP BPE tokenizer files built from open_clip's bundled vocabulary.

    Returns the transformers tokenizer loaded back from `folder`. (transformers 5's
    `CLIPTokenizer(vocab_file=..., merges_file=...)` silently builds a 3-token vocabulary; the
    vocab/merges-object constructor and `from_pretrained` on a folder do not.)
    """
    from open_clip.tokenizer import SimpleTokenizer
    from transformers import AutoTokenizer, CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    st = SimpleTokenizer()
    merges = [pair for pair, _ in sorted(st.bpe_ranks.items(), key=lambda kv: kv[1])]
    # open_clip names its specials <start_of_text>/<end_of_text>; CLIP's published tokenizer
    # files call the same ids <|startoftext|>/<|endoftext|>.
    rename = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    vocab = {rename.get(k, k): v for k, v in st.encoder.items()}
    tok = CLIPTokenizer(vocab=vocab, merges=[tuple(m) for m in merges], pad_token="<|endoftext|>")
    tok.save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


def _qkv(sd: dict, prefix: str, dst: dict, out_prefix: str) -> None:
    w = sd[f"{prefix}.attn.in_proj_weight"].chunk(3)
    b = sd[f"{prefix}.attn.in_proj_bias"].chunk(3)
    for name, wi, bi in zip(("q_proj", "k_proj", "v_proj"), w, b):
        dst[f"{out_prefix}.self_attn.{name}.weight"] = wi
        dst[f"{out_prefix}.self_attn.{name}.bias"] = bi
    pairs = {
        "attn.out_proj": "self_attn.out_proj",
        "ln_1": "layer_norm1",
        "ln_2": "layer_norm2",
        "mlp.c_fc": "mlp.fc1",
        "mlp.c_proj": "mlp.fc2",
    }
    for src, tgt in pairs.items():
        for p in ("weight", "bias"):
            dst[f"{out_prefix}.{tgt}.{p}"] = sd[f"{prefix}.{src}.{p}"]


def open_clip_to_transformers(
    model: torch.nn.Module, model_cfg: dict, *, attn_implementation: str = "sdpa"
):
    """A transformers `CLIPModel` with the weights of open_clip `model` (a plain `CLIP`).

    model_cfg: the open_clip config dict (embed_dim, vision_cfg, text_cfg) it was built from.
    """
    from transformers import CLIPConfig, CLIPModel

    v, t = model_cfg["vision_cfg"], model_cfg["text_cfg"]
    act = "quick_gelu" if model_cfg.get("quick_gelu") else "gelu"
    v_width = v["width"]
    config = CLIPConfig(
        projection_dim=model_cfg["embed_dim"],
        text_config=dict(
            vocab_size=t.get("vocab_size", 49408),
            hidden_size=t["width"],
            intermediate_size=int(t["width"] * t.get("mlp_ratio", 4.0)),
            num_hidden_layers=t["layers"],
            num_attention_heads=t.get("heads", 8),
            max_position_embeddings=t.get("context_length", 77),
            hidden_act=act,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=0,
        ),
        vision_config=dict(
            hidden_size=v_width,
            intermediate_size=int(v_width * v.get("mlp_ratio", 4.0)),
            num_hidden_layers=v["layers"],
            num_attention_heads=v_width // v.get("head_width", 64),
            image_size=v["image_size"],
            patch_size=v["patch_size"],
            hidden_act=act,
        ),
    )
    config._attn_implementation = attn_implementation
    hf = CLIPModel(config)
    sd = {k: val.detach().float() for k, val in model.state_dict().items()}
    out = {
        "vision_model.embeddings.patch_embedding.weight": sd["visual.conv1.weight"],
        "vision_model.embeddings.class_embedding": sd["visual.class_embedding"],
        "vision_model.embeddings.position_embedding.weight": sd["visual.positional_embedding"],
        "vision_model.pre_layrnorm.weight": sd["visual.ln_pre.weight"],
        "vision_model.pre_layrnorm.bias": sd["visual.ln_pre.bias"],
        "vision_model.post_layernorm.weight": sd["visual.ln_post.weight"],
        "vision_model.post_layernorm.bias": sd["visual.ln_post.bias"],
        "visual_projection.weight": sd["visual.proj"].T.contiguous(),
        "text_model.embeddings.token_embedding.weight": sd["token_embedding.weight"],
        "text_model.embeddings.position_embedding.weight": sd["positional_embedding"],
        "text_model.final_layer_norm.weight": sd["ln_final.weight"],
        "text_model.final_layer_norm.bias": sd["ln_final.bias"],
        "text_projection.weight": sd["text_projection"].T.contiguous(),
        "logit_scale": sd["logit_scale"].reshape(()),
    }
    for i in range(v["layers"]):
        _qkv(sd, f"visual.transformer.resblocks.{i}", out, f"vision_model.encoder.layers.{i}")
    for i in range(t["layers"]):
        _qkv(sd, f"transformer.resblocks.{i}", out, f"text_model.encoder.layers.{i}")
    missing, unexpected = hf.load_state_dict(out, strict=False)
    missing = [k for k in missing if "position_ids" not in k]
    if missing or unexpected:
        raise ValueError(f"weight mapping incomplete: missing {missing}, unexpected {unexpected}")
    return hf.eval()


def save_transformers_twin(
    model: torch.nn.Module,
    model_cfg: dict,
    folder: str | Path,
    *,
    attn_implementation: str = "sdpa",
) -> Path:
    """Write `model` as a transformers CLIP folder (weights + tokenizer) that
    `MisalignmentDetector.from_pretrained(folder)` and `CLIPModel.from_pretrained` load."""
    folder = Path(folder)
    hf = open_clip_to_transformers(model, model_cfg, attn_implementation=attn_implementation)
    hf.save_pretrained(folder)
    write_clip_tokenizer(folder)
    return folder
