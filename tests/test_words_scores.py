"""Pure functions: word splitting and spans, token layout, score formulas, selection modes."""

from __future__ import annotations

import pytest
import torch

from feedback.scores import (
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


def test_layout_marks_words_beyond_context_as_unscored():
    words = split_words("red green blue cyan")
    # Template of 3 one-token words; context 8 -> 6 content tokens: 3 template + 3 caption.
    lay = layout_tokens(["A", "photo", "depicts"], words, [1, 1, 1, 1, 1, 1, 1], 8)
    assert lay.slices == [(4, 5), (5, 6), (6, 7), None]
    assert lay.truncated and lay.n_tokens == 7
    # A two-token word cut in the middle is unscored, not averaged over half of it.
    lay = layout_tokens([], words, [2, 2, 2, 2], 8)
    assert lay.slices == [(1, 3), (3, 5), (5, 7), None]
    lay = layout_tokens([], words, [2, 2, 1, 2], 8)
    assert lay.slices == [(1, 3), (3, 5), (5, 6), None]
    scores = word_scores(torch.arange(10, dtype=torch.float32), lay)
    assert scores == [1.5, 3.5, 5.0, None]


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
