"""Real prompts: punctuation runs, weight syntax, emoji, CJK; every dtype on both backends;
folders that would load random weights."""

from __future__ import annotations

import json
import random
import shutil
import warnings

import pytest
import torch

from feedback import MisalignmentDetector, ModelLoadError
from generation.cli import main

PROMPTS = [
    "a red triangle...",
    "a red triangle…",
    "a circle (left).",
    "a (red), square!.",
    "masterpiece, best quality, (red:1.2)...",
    "a [blue] {cat} ((dog)) [[bird:0.8]] <lora:x:1>",
    "一只红色的猫在桌子上。",
    "红色的猫。",
    "a 🐱 cat 🎨!! and 👩‍👩‍👧 family",
    "قطة حمراء",
    "«quoted» — dash; semi: colon? why?!",
    "ＡＢＣ full width，and 、 marks",
    "  spaced   out  ",
]

ALPHABET = (
    list("abcdefg ") * 4
    + list(".,;:!?…()[]{}<>\"'-—–_/\\|@#$%^&*+=~`")
    + [
        "猫",
        "红",
        "。",
        "🐱",
        "🎨",
        "é",
        "ß",
        "İ",
        "ж",
        "ق",
        "\u200b",
        "１",
        "(red:1.2)",
        "...",
        " ",
    ]
)


def fuzz_captions(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        cap = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 30)))
        if cap.strip():
            out.append(cap)
    return out


def check_report(det, rep, caption: str) -> None:
    """Spans index the caption; each scored word owns exactly the tokens that overlap it."""
    backend = det.backend
    text = det.config.template + caption
    offset = len(det.config.template)
    spans = backend.token_spans(text)
    assert rep.caption == caption
    for w in rep.words:
        assert caption[w.start : w.end] == w.word
        ws, we = w.start + offset, w.end + offset
        owned = [i for i, (s, e) in enumerate(spans) if s < we and e > ws]
        if w.score is not None:
            assert owned, (caption, w)
            assert max(owned) < backend.context_length - 2
    # Every token of the caption part is owned by some word unless it stands for whitespace.
    for s, e in spans:
        if s >= offset and text[s:e].strip():
            assert any(w.start + offset < e and w.end + offset > s for w in rep.words), (
                caption,
                text[s:e],
            )


@pytest.mark.parametrize("which", ["open_clip", "transformers"])
def test_real_prompts_and_fuzz_never_fail(which, tiny_open_clip_dir, tiny_hf_dir, images):
    folder = tiny_open_clip_dir if which == "open_clip" else tiny_hf_dir
    det = MisalignmentDetector.from_pretrained(str(folder))
    caps = PROMPTS + fuzz_captions(150)
    imgs = [images[i % len(images)][0] for i in range(len(caps))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # some fuzz captions exceed the tiny context
        reps = det.detect(imgs, caps, batch_size=16)  # one batch mixes every kind
    for rep, cap in zip(reps, caps):
        check_report(det, rep, cap)
    by_cap = dict(zip(caps, reps))
    assert [w.word for w in by_cap["a red triangle..."].words] == ["a", "red", "triangle"] + [
        "."
    ] * 3
    cjk = by_cap["红色的猫。"]  # fits the tiny 24-token context
    assert [w.word for w in cjk.words] == list("红色的猫。")
    assert all(w.score is not None for w in cjk.words)


def test_backends_agree_on_punctuated_prompts(tiny_open_clip_dir, tiny_hf_dir, images):
    """open_clip (byte alignment after ftfy cleaning) and transformers (fast-tokenizer
    offsets) find word spans independently; on the same weights the scores must agree."""
    oc = MisalignmentDetector.from_pretrained(str(tiny_open_clip_dir))
    hf = MisalignmentDetector.from_pretrained(str(tiny_hf_dir))
    caps = [c for c in PROMPTS if "ＡＢＣ" not in c]  # ftfy (open_clip only) folds full width
    imgs = [images[i % len(images)][0] for i in range(len(caps))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for a, b in zip(oc.detect(imgs, caps), hf.detect(imgs, caps)):
            assert [(w.word, w.start, w.end) for w in a.words] == [
                (w.word, w.start, w.end) for w in b.words
            ]
            for wa, wb in zip(a.words, b.words):
                assert (wa.score is None) == (wb.score is None), (a.caption, wa)
                if wa.score is not None:
                    assert wa.score == pytest.approx(wb.score, abs=1e-6), (a.caption, wa)


def test_cli_accepts_real_prompts(tmp_path, tiny_open_clip_dir, images, capsys):
    img = tmp_path / "img.png"
    images[0][0].save(img)
    for cap in ["a red triangle...", "a circle (left).", "(red:1.2), masterpiece!."]:
        code = main(["check", str(img), cap, "--model", str(tiny_open_clip_dir), "--json"])
        out = json.loads(capsys.readouterr().out)
        assert code == 0 and out["caption"] == cap


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
@pytest.mark.parametrize("which", ["open_clip", "transformers"])
def test_every_dtype_on_both_backends(which, dtype, tiny_open_clip_dir, tiny_hf_dir, images):
    folder = str(tiny_open_clip_dir if which == "open_clip" else tiny_hf_dir)
    ref = MisalignmentDetector.from_pretrained(folder, dtype="fp32")
    low = MisalignmentDetector.from_pretrained(folder, dtype=dtype)
    want = {"fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    assert low.backend.image_dtype == want and low.backend.text_dtype == want
    imgs, caps = zip(*images[:3])
    for a, b in zip(ref.detect(imgs, caps), low.detect(imgs, caps)):
        assert b.cosine == pytest.approx(a.cosine, abs=0.05)
        sa = torch.tensor([w.score for w in a.words])
        sb = torch.tensor([w.score for w in b.words])
        assert torch.isfinite(sb).all()
        # Low precision moves the numbers, not the picture: scores stay correlated (bf16 keeps
        # 8 mantissa bits, so less so on this deliberately sharp random model).
        r = torch.corrcoef(torch.stack([sa, sb]))[0, 1]
        assert r > {"fp16": 0.95, "bf16": 0.75}[dtype], float(r)


@pytest.mark.parametrize("weights", [None, "model.pt"])
def test_open_clip_folder_without_weights_is_refused(weights, tmp_path, tiny_open_clip_dir):
    folder = tmp_path / "noweights"
    folder.mkdir()
    shutil.copy(tiny_open_clip_dir / "open_clip_config.json", folder)
    if weights:
        shutil.copy(tiny_open_clip_dir / "open_clip_model.safetensors", folder / weights)
    with pytest.raises(ModelLoadError, match="open_clip_model.safetensors.*random weights"):
        MisalignmentDetector.from_pretrained(str(folder))
