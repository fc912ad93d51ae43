"""The tensor API: `score()` on image tensors, NaN masking, lent models left alone, configs
that round-trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from feedback import DetectorConfig, InputError, MisalignmentDetector, NonFiniteScoreError
from feedback.backends import OpenClipBackend, TransformersBackend


def _as_tensor(pils) -> torch.Tensor:
    arr = np.stack([np.asarray(im, dtype=np.float32) / 255.0 for im in pils])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


@pytest.mark.parametrize("which", ["open_clip", "transformers"])
def test_tensor_path_equals_pil_path(which, tiny_open_clip_dir, tiny_hf_dir, images):
    det = MisalignmentDetector.from_pretrained(
        str(tiny_open_clip_dir if which == "open_clip" else tiny_hf_dir)
    )
    pils, caps = zip(*images)
    from_pil = det.score(list(pils), list(caps))
    from_tensor = det.score(_as_tensor(pils), list(caps))
    assert from_tensor.word_scores.shape == (len(caps), max(len(c.split()) for c in caps))
    m = from_pil.word_mask
    assert torch.equal(m, from_tensor.word_mask)
    assert (from_pil.word_scores[m] - from_tensor.word_scores[m]).abs().max() <= 1e-4
    assert torch.allclose(from_pil.cosine, from_tensor.cosine, atol=1e-5)
    # detect() is a thin layer over score(): same numbers.
    reps = det.detect(list(pils), list(caps))
    for b, rep in enumerate(reps):
        got = [w.score for w in rep.words]
        want = from_pil.word_scores[b, : len(got)].tolist()
        assert got == pytest.approx(want, abs=1e-7)
        assert rep.misaligned_words == [
            w.text for w, f in zip(from_pil.words[b], from_pil.misaligned[b].tolist()) if f
        ]


def test_tensor_of_another_size_is_resized_on_device(tiny_open_clip_dir, images):
    det = MisalignmentDetector.from_pretrained(str(tiny_open_clip_dir))
    x = _as_tensor([images[0][0]])
    big = torch.nn.functional.interpolate(x, size=(64, 96), mode="nearest")
    out = det.score(big, [images[0][1]])
    assert out.word_mask.any() and torch.isfinite(out.word_scores).all()
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        det.score(x * 255, [images[0][1]])
    with pytest.raises(InputError, match="shape"):
        det.score(x[:, :1], [images[0][1]])


def test_score_under_outer_inference_mode_and_no_grad(tiny_open_clip_dir, images):
    det = MisalignmentDetector.from_pretrained(str(tiny_open_clip_dir))
    pils, caps = zip(*images[:3])
    ref = det.score(_as_tensor(pils), list(caps)).word_scores
    with torch.inference_mode():
        x = _as_tensor(pils)  # an inference tensor
        a = det.score(x, list(caps)).word_scores
    with torch.no_grad():
        b = det.score(_as_tensor(pils), list(caps)).word_scores
    assert torch.allclose(a, ref) and torch.allclose(b, ref)


def test_nan_policy_mask_keeps_the_other_samples(tiny_open_clip_dir, images):
    det = MisalignmentDetector.from_pretrained(str(tiny_open_clip_dir))
    pils, caps = zip(*images[:3])
    real = det.backend.encode_image

    def poisoned(pix):
        emb = real(pix).clone()
        emb[1] = float("nan")
        return emb

    det.backend.encode_image = poisoned
    try:
        with pytest.raises(NonFiniteScoreError):
            det.score(_as_tensor(pils), list(caps))
        out = det.score(_as_tensor(pils), list(caps), nan_policy="mask")
    finally:
        det.backend.encode_image = real
    assert out.valid.tolist() == [True, False, True]
    assert not out.word_mask[1].any() and out.word_mask[0].any() and out.word_mask[2].any()
    assert torch.isfinite(out.f_clip_score).all() and torch.isfinite(out.word_scores).all()
    with pytest.raises(InputError, match="nan_policy"):
        det.score(_as_tensor(pils), list(caps), nan_policy="ignore")


def test_lent_models_keep_mode_and_requires_grad(tiny_open_clip_dir, tiny_hf_dir, images):
    import open_clip
    from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

    from tests.conftest import make_open_clip

    oc = make_open_clip().train()
    _, _, pre = open_clip.create_model_and_transforms(f"local-dir:{tiny_open_clip_dir}")
    tok = open_clip.get_tokenizer(f"local-dir:{tiny_open_clip_dir}")
    hf = CLIPModel.from_pretrained(str(tiny_hf_dir)).train()
    backends = [
        (oc, lambda: OpenClipBackend(oc, pre, tok)),
        (
            hf,
            lambda: TransformersBackend(
                hf,
                AutoTokenizer.from_pretrained(str(tiny_hf_dir)),
                CLIPImageProcessor(
                    size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
                ),
            ),
        ),
    ]
    for model, make in backends:
        before = [p.requires_grad for p in model.parameters()]
        assert all(before) and model.training
        det = MisalignmentDetector(make(), DetectorConfig(layers=2))
        out = det.score([images[0][0]], [images[0][1]])
        assert out.word_mask.any()
        assert model.training and [p.requires_grad for p in model.parameters()] == before
        # The detector's backward does not leave gradients on the lent weights.
        assert all(p.grad is None for p in model.parameters())


def test_config_round_trip_and_overrides(tmp_path, tiny_open_clip_dir):
    cfg = DetectorConfig(layers=2, threshold=-1e-3, mode="most-negative", template="An image of ")
    path = tmp_path / "detector.json"
    cfg.save(path)
    assert DetectorConfig.load(path) == cfg
    det = MisalignmentDetector.from_pretrained(str(tiny_open_clip_dir), config=path, layers=3)
    assert det.config.layers == 3 and det.config.mode == "most-negative"
    assert det.config.template == "An image of "
    with pytest.raises(InputError, match="unknown detector option"):
        MisalignmentDetector.from_pretrained(str(tiny_open_clip_dir), layer=3)
    path.write_text('{"layers": 2, "nonsense": 1}')
    with pytest.raises(InputError, match="nonsense"):
        DetectorConfig.load(path)
