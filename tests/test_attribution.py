"""The attribution matches the reference formula, both backends agree, batching is exact."""

from __future__ import annotations

import pytest
import torch

from feedback import MisalignmentDetector
from feedback.backends import attributed_text_forward, encode_text_fast
from feedback.words import split_words

TEMPLATE = "A photo depicts "


def reference_word_scores(folder, image, caption, layers=3):
    """Per-pair, per-layer transcription of the reference: HF CLIPModel, eager attention,
    `output_attentions`, one autograd.grad per layer, R = mean_l mean_h(G*A), row EOT."""
    from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

    model = CLIPModel.from_pretrained(folder, attn_implementation="eager").eval()
    tok = AutoTokenizer.from_pretrained(folder)
    size = model.config.vision_config.image_size
    proc = CLIPImageProcessor(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size}
    )
    text = TEMPLATE + caption
    ids = tok(
        [text],
        padding="max_length",
        max_length=model.config.text_config.max_position_embeddings,
        return_tensors="pt",
    ).input_ids
    px = proc(images=[image], return_tensors="pt").pixel_values
    out = model(input_ids=ids, pixel_values=px, output_attentions=True)
    s = (out.image_embeds * out.text_embeds).sum()
    attns = out.text_model_output.attentions
    cams = []
    for a in attns[-layers:]:
        g = torch.autograd.grad(s, [a], retain_graph=True)[0]
        cams.append((g[0] * a[0]).mean(dim=0))  # no ReLU, no clamp
    r = torch.stack(cams).mean(0)
    eot = int((ids[0] == 49407).nonzero()[0])
    token_scores = r[eot, 1:eot]
    words = [w.text for w in split_words(text)]
    counts = [len(tok(w, add_special_tokens=False).input_ids) for w in words]
    scores, pos = [], 0
    for c in counts:
        scores.append(float(token_scores[pos : pos + c].mean().detach()))
        pos += c
    assert pos == eot - 1
    return scores[len(TEMPLATE.split()) :], float(s.detach())


def test_parity_with_reference_formula(tiny_hf_dir, images):
    det = MisalignmentDetector.from_pretrained(str(tiny_hf_dir))
    worst = 0.0
    for image, caption in images[:4]:
        ref, ref_cos = reference_word_scores(tiny_hf_dir, image, caption)
        rep = det(image, caption)
        ours = [w.score for w in rep.words]
        assert len(ours) == len(ref)
        worst = max(worst, max(abs(a - b) for a, b in zip(ours, ref)))
        assert rep.cosine == pytest.approx(ref_cos, abs=1e-6)
    assert worst <= 1e-6
    # The scores are not all ~0: the comparison is meaningful.
    assert max(abs(w.score) for w in rep.words) > 1e-5


def test_backends_agree_on_same_weights(tiny_open_clip_dir, tiny_hf_dir, images):
    oc = MisalignmentDetector.from_pretrained(str(tiny_open_clip_dir))
    hf = MisalignmentDetector.from_pretrained(str(tiny_hf_dir))
    assert type(oc.backend).__name__ == "OpenClipBackend"
    assert type(hf.backend).__name__ == "TransformersBackend"
    imgs, caps = zip(*images)
    for a, b in zip(oc.detect(imgs, caps), hf.detect(imgs, caps)):
        assert a.cosine == pytest.approx(b.cosine, abs=1e-5)
        for wa, wb in zip(a.words, b.words):
            assert (wa.word, wa.start, wa.end) == (wb.word, wb.start, wb.end)
            assert wa.score == pytest.approx(wb.score, abs=1e-6)


@pytest.mark.parametrize("which", ["tiny_open_clip_dir", "tiny_hf_dir"])
def test_text_forward_matches_stock_model(which, request):
    det = MisalignmentDetector.from_pretrained(str(request.getfixturevalue(which)))
    b = det.backend
    ids = b.tokenize(
        [
            "A photo depicts a red circle",
            "A photo depicts a large blue square on the left and a small red cross",
        ]
    )
    eot = b.eot_positions(ids)
    n = int(eot.max()) + 1
    stock = b.encode_text(ids)
    with torch.enable_grad():
        emb, attns = attributed_text_forward(b, ids[:, :n], eot, 3)
    assert torch.allclose(emb, stock, atol=1e-5)
    assert torch.allclose(encode_text_fast(b, ids[:, :n], eot), stock, atol=1e-5)
    # Probabilities: rows sum to 1; the last layer keeps only the EOT query.
    assert len(attns) == 3 and attns[-1].shape[2] == 1
    assert torch.allclose(attns[0].sum(-1), torch.ones(()), atol=1e-5)


@pytest.mark.parametrize("which", ["tiny_open_clip_dir", "tiny_hf_dir"])
def test_batching_equals_one_pair_at_a_time(which, request, images):
    det = MisalignmentDetector.from_pretrained(str(request.getfixturevalue(which)))
    imgs, caps = zip(*images)
    lengths = {len(c.split()) for c in caps}
    assert len(lengths) > 1  # the batch mixes caption lengths
    batched = det.detect(imgs, caps, batch_size=len(caps))
    for (im, cap), rb in zip(images, batched):
        single = det(im, cap)
        assert single.cosine == pytest.approx(rb.cosine, abs=1e-6)
        for a, b in zip(single.words, rb.words):
            assert a.score == pytest.approx(b.score, abs=1e-6)


def test_no_autograd_in_image_tower_or_early_layers(tiny_open_clip_dir, images):
    det = MisalignmentDetector.from_pretrained(str(tiny_open_clip_dir), layers=2)
    seen = {}

    def probe(name):
        def hook(module, args):
            seen[name] = torch.is_grad_enabled()

        return hook

    model = det.backend.model
    handles = [
        model.visual.register_forward_pre_hook(probe("visual")),
        det.backend.blocks[0].register_forward_pre_hook(probe("text0")),
        det.backend.blocks[1].register_forward_pre_hook(probe("text1")),
    ]
    try:
        det(*images[0])
    finally:
        for h in handles:
            h.remove()
    assert seen == {"visual": False, "text0": False, "text1": False}
    assert not any(p.requires_grad for p in model.parameters())


def test_signs_are_kept(tiny_open_clip_dir, images):
    det = MisalignmentDetector.from_pretrained(str(tiny_open_clip_dir))
    scores = [w.score for r in det.detect(*zip(*images)) for w in r.words]
    assert min(scores) < 0 < max(scores)


def test_layers_option_changes_scores_and_is_validated(tiny_open_clip_dir, images):
    d1 = MisalignmentDetector.from_pretrained(str(tiny_open_clip_dir), layers=1)
    d4 = MisalignmentDetector.from_pretrained(str(tiny_open_clip_dir), layers=4)
    a, b = d1(*images[0]), d4(*images[0])
    assert [w.score for w in a.words] != [w.score for w in b.words]
    from feedback import InputError

    with pytest.raises(InputError, match="layers=5"):
        MisalignmentDetector.from_pretrained(str(tiny_open_clip_dir), layers=5)
