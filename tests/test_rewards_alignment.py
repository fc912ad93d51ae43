"""Words mapped onto a generator's tokenizer (SD 1.x/2.x and both SDXL tokenizers), and the
rewards built on them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from feedback import MisalignmentDetector
from feedback.alignment import align_words
from feedback.rewards import FeedbackReward, RewardConfig


def _piece_text(tok, ids):
    return "".join(p.removesuffix("</w>") for p in tok.convert_ids_to_tokens(ids))


@pytest.mark.parametrize("which", ["sd", "sdxl_2"])
def test_words_land_on_their_tokens(which, sd_tokenizers):
    tok = sd_tokenizers[which]
    prompt = "A photo of an astronautically red, small... (circle:1.2) riding a horse!"
    al = align_words(prompt, tok)
    assert len(al.input_ids) == 77
    texts = [w.text for w in al.words]
    by_word = dict(zip(texts, al.positions))
    # start-of-text offset: the first word is the token right after SOT
    assert al.positions[0] == [1]
    assert al.input_ids[0] == tok.bos_token_id and 0 in al.special_positions
    # a multi-BPE word owns consecutive positions that spell it
    astro = by_word["astronautically"]
    assert len(astro) > 1 and astro == list(range(astro[0], astro[-1] + 1))
    for w, pos in zip(al.words, al.positions):
        assert pos, f"{w.text!r} owns no token"
        assert not set(pos) & set(al.special_positions)
        spelled = _piece_text(tok, [al.input_ids[p] for p in pos])
        if w.text.isalnum():
            assert spelled == w.text.lower()
        else:  # punctuation words may share a token ("..." is one token for three ".")
            assert w.text.lower() in spelled or spelled in w.text.lower()
    # end-of-text and padding are specials, never a word's
    eos = al.input_ids.index(tok.eos_token_id)
    assert eos in al.special_positions and all(p < eos for ps in al.positions for p in ps)
    assert al.input_ids[-1] == tok.pad_token_id
    assert not any(al.truncated)


def test_both_sdxl_tokenizers_agree_on_positions(sd_tokenizers):
    prompt = "a cyan triangle, on the left... and a small red cross"
    a = align_words(prompt, sd_tokenizers["sd"])
    b = align_words(prompt, sd_tokenizers["sdxl_2"])
    assert a.positions == b.positions
    assert a.input_ids != b.input_ids  # they differ only in padding


def test_truncation_at_77(sd_tokenizers):
    tok = sd_tokenizers["sd"]
    prompt = " ".join(f"red{i % 10} circle" for i in range(60))  # far beyond 75 tokens
    al = align_words(prompt, tok)
    assert len(al.input_ids) == 77 and al.input_ids[76] == tok.eos_token_id
    kept = [p for ps in al.positions for p in ps]
    assert max(kept) == 75 and min(kept) == 1
    assert any(al.truncated) and al.truncated[-1] and al.positions[-1] == []
    first_cut = al.truncated.index(True)
    assert not any(al.truncated[:first_cut]) and all(al.truncated[first_cut + 1 :])


def test_rewards_are_normalized_by_the_threshold(tiny_open_clip_dir, images, sd_tokenizers):
    det = MisalignmentDetector.from_pretrained(str(tiny_open_clip_dir), threshold=-1e-3)
    pils, caps = zip(*images)
    reward = FeedbackReward(det)
    r, info = reward(list(pils), list(caps), [{}] * len(caps))  # DDPO passes metadata
    assert r.shape == (len(caps),) and info.unit == pytest.approx(1e-3)
    out = info.output
    assert torch.allclose(r, out.f_clip_score / 1e-3)
    assert torch.allclose(info.word_rewards, out.word_scores / 1e-3)
    # a flagged word is below -1 in reward units
    assert bool((info.word_rewards[out.misaligned] < -1).all())
    # a CLIPScore term is added on request; the paper scores stay as they were
    r2, info2 = FeedbackReward(det, RewardConfig(clip_score_weight=0.5))(list(pils), list(caps))
    assert torch.allclose(r2, r + 0.5 * out.clip_score, atol=1e-5)
    assert torch.allclose(info2.output.word_scores, out.word_scores)

    tr = reward.token_rewards(info, sd_tokenizers["sd"])
    assert tr.rewards.shape == (len(caps), 77) and tr.input_ids.shape == (len(caps), 77)
    for b, al in enumerate(tr.alignments):
        for pos in al.positions:
            for p in pos:
                owners = [j for j, ps in enumerate(al.positions) if p in ps]
                want = np.mean([info.word_rewards[b, j].item() for j in owners])
                assert tr.rewards[b, p].item() == pytest.approx(want, abs=1e-6)
                assert tr.mask[b, p]
        assert not tr.mask[b, al.special_positions].any()


def test_reward_masks_non_finite_samples(tiny_open_clip_dir, images):
    det = MisalignmentDetector.from_pretrained(str(tiny_open_clip_dir))
    pils, caps = zip(*images)
    x = torch.from_numpy(
        np.stack([np.asarray(im, dtype=np.float32) / 255.0 for im in pils])
    ).permute(0, 3, 1, 2)
    x = x.clone()
    x[0, 0, 0, 0] = float("nan")
    r, info = FeedbackReward(det, RewardConfig(invalid_reward=-7.0))(x, list(caps))
    assert not info.valid[0] and info.valid[1:].all()
    assert r[0].item() == -7.0 and torch.isfinite(r).all()


def test_reward_unit_must_be_positive(tiny_open_clip_dir):
    det = MisalignmentDetector.from_pretrained(str(tiny_open_clip_dir))
    with pytest.raises(ValueError, match="unit"):
        FeedbackReward(det, RewardConfig(unit=0.0))
