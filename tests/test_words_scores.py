"""Pure functions: word splitting and spans, token layout, score formulas, selection modes."""

from __future__ import annotations

import pytest
import torch

from feedback.formulas import (
    clip_score,
    f_clip_score,
    select_misaligned,
    sum_negative_attribution,
)
from feedback.words import join_template, layout_tokens, split_words, word_scores


def test_split_words_spans_and_punctuation():
    cap = "A red circle, a  blue square."
    words = split_words(cap)
    assert [w.text for w in words] == ["A", "red", "circle", ",", "a", "blue", "square", "."]
    for w in words:
        assert cap[w.start : w.end] == w.text
    assert [w.is_punctuation for w in words].count(True) == 2
    # Other punctuation stays attached to its word, as in the reference.
    assert [w.text for w in split_words("dogs!! ok")] == ["dogs!!", "ok"]


def test_join_template_never_fuses_words():
    assert join_template("A photo depicts ", "a cat") == "A photo depicts a cat"
    assert join_template("A photo of", "a cat") == "A photo of a cat"


def _one_token_per_word(text: str) -> list[tuple[int, int]]:
    return [(w.start, w.end) for w in split_words(text)]


def test_layout_marks_words_beyond_context_as_unscored():
    text = join_template("A photo depicts ", "red green blue cyan")
    offset = len("A photo depicts ")
    words = split_words("red green blue cyan")
    # Template of 3 one-token words; context 8 -> 6 content tokens: 3 template + 3 caption.
    lay = layout_tokens(words, _one_token_per_word(text), offset, 8)
    assert lay.slices == [(4, 5), (5, 6), (6, 7), None]
    assert lay.truncated and lay.n_tokens == 7
    # Two tokens per word; a word cut in the middle is unscored, not averaged over half of it.
    two = [(w.start, w.start + 1) for w in words] + [(w.start + 1, w.end) for w in words]
    two.sort()
    lay = layout_tokens(words, two, 0, 8)
    assert lay.slices == [(1, 3), (3, 5), (5, 7), None]
    three = [(0, 1), (1, 3), (4, 6), (6, 9), (10, 14), (15, 17), (17, 19)]
    lay = layout_tokens(words, three, 0, 8)
    assert lay.slices == [(1, 3), (3, 5), (5, 6), None]
    scores = word_scores(torch.arange(10, dtype=torch.float32), lay)
    assert scores == [1.5, 3.5, 5.0, None]


def test_token_straddling_words_belongs_to_both():
    # "red..." -> words "red" "." "." "."; a BPE that reads "..." as one token gives that
    # token to each of the three "." words.
    words = split_words("red...")
    lay = layout_tokens(words, [(0, 3), (3, 6)], 0, 77)
    assert [w.text for w in words] == ["red", ".", ".", "."]
    assert lay.slices == [(1, 2), (2, 3), (2, 3), (2, 3)]
    # A word whose characters no token covers is unscored, not given a neighbour's token.
    lay = layout_tokens(split_words("a \u200b b"), [(0, 1), (4, 5)], 0, 77)
    assert lay.slices == [(1, 2), None, (2, 3)] and not lay.truncated


def test_cjk_characters_are_words():
    assert [w.text for w in split_words("一只红色的猫。")] == list("一只红色的猫。")
    assert split_words("一只猫。")[-1].is_punctuation
    # Hangul uses spaces; Latin next to CJK splits at the script boundary.
    assert [w.text for w in split_words("빨간 고양이")] == ["빨간", "고양이"]
    assert [w.text for w in split_words("red猫")] == ["red", "猫"]


def test_byte_spans_and_mapping_back_to_the_caption():
    from feedback.words import byte_token_spans, map_spans_to_original

    # A CJK character split over two byte-level tokens belongs to both tokens.
    text = "猫 ok"
    b = "猫".encode()
    assert byte_token_spans(text, [b[:2], b[2:], b"ok"]) == [(0, 1), (0, 1), (2, 4)]
    with pytest.raises(ValueError):
        byte_token_spans("abc", [b"x"])
    # Cleaning collapsed whitespace and lowercased: spans map back onto the original.
    orig = "  A  Red   CAT"
    cleaned = "a red cat"
    spans = map_spans_to_original(orig, cleaned, [(0, 1), (2, 5), (6, 9)])
    assert [orig[s:e] for s, e in spans] == ["A", "Red", "CAT"]
    # HTML unescaping replaced "&amp;" by "&": the token maps inside the entity, so the word
    # "&amp;" owns it.
    (s, e), (s2, e2) = map_spans_to_original("a &amp; b", "a & b", [(2, 3), (4, 5)])
    assert 2 <= s < e <= 7 and (s2, e2) == (8, 9)


def test_scores_formulas():
    assert clip_score(0.3) == pytest.approx(0.75)
    assert clip_score(-0.2) == 0.0
    assert f_clip_score(-0.01, 0.75) == pytest.approx(-0.01 * (1 - 0.3))
    assert f_clip_score(0.0, 1.0) == 0.0


def test_selection_modes():
    scores = [1e-4, -2e-4, None, -1e-6, -6e-5]
    eligible = [True, True, True, True, False]
    thr = select_misaligned(scores, mode="threshold", threshold=-5e-5, eligible=eligible)
    assert thr == [1]
    assert select_misaligned(scores, mode="threshold", threshold=-5e-5) == [1, 4]
    assert select_misaligned(scores, mode="most-negative", eligible=eligible) == [1]
    assert sum_negative_attribution(scores, [1, 4]) == pytest.approx(-2.6e-4)
    assert sum_negative_attribution(scores, []) == 0.0
    with pytest.raises(ValueError, match="mode"):
        select_misaligned(scores, mode="nope")
