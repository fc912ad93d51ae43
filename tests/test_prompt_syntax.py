"""The user's own weight syntax (A1111, Compel): parsed into the clean prompt plus per-word
weights, applied from round 0, scored as clean text, emitted so that it round-trips."""

from __future__ import annotations

import pytest
import tiny_pipelines as tp
import torch

from feedback import MisalignmentDetector, split_words
from generation import FeedbackPipeline, LoopConfig, Reweight, emit, parse_prompt


def _weights(prompt, syntax="auto"):
    p = parse_prompt(prompt, syntax)
    return p.text, {w.text: x for w, x in zip(split_words(p.text), p.word_weights()) if x != 1}


@pytest.mark.parametrize(
    "prompt, text, weights",
    [
        ("a small (red:1.3) circle", "a small red circle", {"red": 1.3}),
        ("(red)", "red", {"red": 1.1}),
        ("((red)) circle", "red circle", {"red": 1.21}),
        ("[[white]] square", "white square", {"white": 0.8264}),
        (
            "(a big (blue:1.5) square:0.8)",
            "a big blue square",
            {"a": 0.8, "big": 0.8, "blue": 1.2, "square": 0.8},
        ),
        ("a red++ circle-", "a red circle", {"red": 1.21, "circle": 0.9}),
        ("(big blue)1.2 square", "big blue square", {"big": 1.2, "blue": 1.2}),
        ("(big blue)-- square", "big blue square", {"big": 0.81, "blue": 0.81}),
        ("a \\(literal\\) bracket", "a (literal) bracket", {}),
        ("赤い (円:1.5)", "赤い 円", {"円": 1.5}),
    ],
)
def test_a1111_and_compel_syntax_is_parsed(prompt, text, weights):
    assert _weights(prompt) == (text, weights)


@pytest.mark.parametrize(
    "prompt",
    [
        "a small red circle to the left of a blue square.",
        "a t-shirt, 3-4 dogs and a well-known logo",
        "a (cat",  # unmatched: text
        "50% off!",
        "",
    ],
)
def test_a_prompt_without_syntax_is_unchanged(prompt):
    p = parse_prompt(prompt)
    assert p.text == prompt and not p.weighted


def test_syntax_modes():
    assert _weights("(red) [blue]", "compel") == ("red [blue]", {})  # ( ) groups; [ ] text
    assert _weights("(red)1.5", "compel") == ("red", {"red": 1.5})
    assert _weights("red++", "a1111") == ("red++", {})
    assert _weights("(red:1.3)", "none") == ("(red:1.3)", {})
    with pytest.raises(ValueError, match="prompt syntax must be one of"):
        parse_prompt("x", "sdxl")


@pytest.mark.parametrize("syntax", ["a1111", "compel"])
@pytest.mark.parametrize(
    "text, cycle",
    [
        ("a small red circle, left of a (blue) square", [1, 1.25, 1, 0.5]),
        ("赤い 円 and a cube", [1.3731, 1, 2.0]),
        ("a t-shirt++ with [brackets] and C++", [1, 1.1, 0.9]),
        ("plain words only", [1]),
    ],
)
def test_emitted_syntax_round_trips(text, cycle, syntax):
    words = split_words(text)
    weights = [cycle[i % len(cycle)] for i in range(len(words))]
    s = emit(text, words, weights, syntax)
    back = parse_prompt(s)
    assert back.text == text, s
    assert back.word_weights(words) == [round(w, 4) for w in weights], s


@pytest.fixture(scope="module")
def sd(sd_tokenizers):
    return tp.build("sd", sd_tokenizers["sd"])


@pytest.fixture(scope="module")
def detector(tiny_open_clip_dir):
    return MisalignmentDetector.from_pretrained(str(tiny_open_clip_dir))


def test_the_loop_applies_the_users_weights_from_round_zero(sd, detector):
    kw = tp.call_kwargs("sd")
    fb = FeedbackPipeline(sd, detector, LoopConfig(strategy="best_of_n", max_images=1))
    out = fb("a small (red:1.5) circle", output_type="pt", **kw)
    h = out.history[0]
    r0 = h.rounds[0]
    # the detector scored the clean text; the syntax string carries the user's weight
    assert h.prompt == "a small red circle" and h.source == "a small (red:1.5) circle"
    assert [w.word for w in r0.reports[0].words] == ["a", "small", "red", "circle"]
    assert r0.weights == [1.0, 1.0, 1.5, 1.0]
    assert r0.prompt_a1111 == "a small (red:1.5) circle"
    # round 0 is the weighted call, not the plain one (and not the literal text)
    words = split_words(h.prompt)
    emb = fb.encode(h.prompt, words, r0.weights, **kw)
    gen = [torch.Generator().manual_seed(s) for s in r0.seeds]
    want = sd(**emb, generator=gen, output_type="pt", **kw).images
    assert torch.equal(r0.images, want)
    plain = sd(
        prompt=h.prompt,
        generator=[torch.Generator().manual_seed(r0.seeds[0])],
        output_type="pt",
        **kw,
    ).images
    assert not torch.equal(r0.images, plain)
    # without syntax: the plain call, and no `source`
    h2 = fb("a small red circle", output_type="pt", **kw).history[0]
    assert h2.source is None and "source" not in h2.to_dict()
    assert torch.equal(h2.rounds[0].images, plain)


def test_reweight_starts_from_the_users_weights_and_never_lowers_them(sd, detector):
    kw = tp.call_kwargs("sd")
    det = MisalignmentDetector.from_pretrained(
        detector.backend.name.split(":", 1)[-1], mode="most-negative"
    )
    fb = FeedbackPipeline(sd, det, LoopConfig(strategy=Reweight(max_weight=2), max_images=3))
    h = fb("a (small:3) red++ circle", output_type="pt", **kw).history[0]
    assert h.rounds[0].weights == [1.0, 3.0, 1.21, 1.0]
    for a, b in zip(h.rounds, h.rounds[1:]):
        assert all(y >= x for x, y in zip(a.weights, b.weights))
    assert h.rounds[1].weights[1] == 3.0  # above max_weight: kept, not cut to 2


def test_weight_syntax_refusals(sd, detector):
    fb = FeedbackPipeline(sd, detector, LoopConfig(max_images=1), adapter="generic")
    with pytest.raises(ValueError, match="carries weight syntax.*prompt_syntax='none'"):
        fb("a (red:1.3) circle", **tp.call_kwargs("sd"))
    fb2 = FeedbackPipeline(sd, detector, LoopConfig(max_images=1))
    with pytest.raises(ValueError, match="empty once its weight syntax is removed"):
        fb2("( )", **tp.call_kwargs("sd"))
    # prompt_syntax="none": the text as typed, brackets and all
    fb3 = FeedbackPipeline(sd, detector, LoopConfig(max_images=1, prompt_syntax="none"))
    h = fb3("a (red:1.3) circle", output_type="pt", **tp.call_kwargs("sd")).history[0]
    assert h.prompt == "a (red:1.3) circle" and set(h.rounds[0].weights) == {1.0}
