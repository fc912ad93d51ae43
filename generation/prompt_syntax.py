"""The prompt weight syntax SD users write, parsed into the clean prompt plus per-character
weights, and emitted back so that `parse_prompt(emit(text, words, w))` gives `w` again.

Grammar (`syntax="auto"`, the default, reads both; a prompt without any of it comes back
unchanged, bit for bit):

A1111 / stable-diffusion-webui
    ``(text)``          x 1.1 (nested: ``((text))`` x 1.21)
    ``[text]``          / 1.1
    ``(text:1.3)``      x 1.3 (the number replaces the 1.1)
    ``\\(`` ``\\)`` ``\\[`` ``\\]`` ``\\\\``   literal characters (also ``\\+`` ``\\-``)
Compel
    ``word+`` ``word++``   x 1.1 per "+"      ``word-`` ``word--``   x 0.9 per "-"
    ``(text)1.3``       x 1.3               ``(text)++`` ``(text)-``   as for a word

With `syntax="compel"` a bare ``(text)`` only groups (x 1, Compel's meaning) and ``[...]`` is
literal; `syntax="a1111"` reads no "+"/"-" suffixes; `syntax="none"` parses nothing. An
unmatched bracket is kept as a literal character. A "-" or "+" only counts as a weight where
it ends a word (followed by a space, punctuation or the end): "t-shirt" and "3-4" are text.
Weights are rounded to 4 decimals, and emitted with up to 4 (trailing zeros dropped), so that
emitting and parsing again is exact.

The weighting itself (what a weight does to the embeddings) is the adapters' (see
`generation.weighting`); this module only reads and writes the syntax (there is no parser in
diffusers, and Compel's is tied to its own embedding code, so we keep a small documented one).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from feedback import Word, split_words

SYNTAXES = ("auto", "a1111", "compel", "none")
A1111_STEP = 1.1
COMPEL_UP, COMPEL_DOWN = 1.1, 0.9
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)")
_SUFFIX_END = set(" \t\n,.;:!?)]")
_ESCAPABLE = "()[]\\+-"


def _r(w: float) -> float:
    return round(w, 4)


@dataclass
class ParsedPrompt:
    """source: what the user typed; text: the clean prompt (what the detector scores and the
    encoders read); char_weights: one weight per character of `text` (1 = none given)."""

    source: str
    text: str
    char_weights: list[float] = field(default_factory=list)

    @property
    def weighted(self) -> bool:
        """True when the prompt carried any weight other than 1."""
        return any(w != 1.0 for w in self.char_weights)

    def word_weights(self, words: Sequence[Word] | None = None) -> list[float]:
        """One weight per word of `text` (default: `feedback.split_words(text)`, as the
        detector splits it): the weight of its characters, the one furthest from 1 where a
        word is only partly inside a weighted group."""
        words = split_words(self.text) if words is None else words
        out = []
        for w in words:
            ws = self.char_weights[w.start : w.end] or [1.0]
            out.append(max(ws, key=lambda x: abs(math.log(x)) if x > 0 else math.inf))
        return out

    def to_dict(self) -> dict:
        return {"source": self.source, "text": self.text, "weighted": self.weighted}


def parse_prompt(prompt: str, syntax: str = "auto") -> ParsedPrompt:
    """`prompt` with weight syntax -> `ParsedPrompt` (see the module docstring)."""
    if syntax not in SYNTAXES:
        raise ValueError(f"prompt syntax must be one of {SYNTAXES}, got {syntax!r}")
    if syntax == "none" or not re.search(r"[()\[\]\\]|[+-](?=[\s,.;:!?)\]]|$)", prompt):
        return ParsedPrompt(prompt, prompt, [1.0] * len(prompt))
    chars, weights = _Parser(prompt, syntax).run()
    return ParsedPrompt(prompt, "".join(chars), [_r(w) for w in weights])


class _Parser:
    def __init__(self, s: str, syntax: str):
        self.s, self.syntax = s, syntax
        self.a1111 = syntax in ("auto", "a1111")
        self.compel = syntax in ("auto", "compel")

    def run(self):
        s = self.s
        self.match = self._brackets()
        out, wts = [], []
        # stack of (open index, kind, start in out)
        stack: list[tuple[int, str, int]] = []
        i = 0
        while i < len(s):
            c = s[i]
            if c == "\\" and i + 1 < len(s) and s[i + 1] in _ESCAPABLE:
                out.append(s[i + 1])
                wts.append(1.0)
                i += 2
                continue
            if c in "([" and i in self.match:
                stack.append((i, c, len(out)))
                i += 1
                continue
            if c in ")]" and stack and self.match.get(stack[-1][0]) == i:
                o, kind, start = stack.pop()
                mult = 1.0
                j = i + 1
                if kind == "[":
                    mult = 1.0 / A1111_STEP
                else:
                    inner = "".join(out[start:])
                    m = re.search(r":\s*(" + _NUMBER.pattern + r")\s*$", inner)
                    if self.a1111 and m:
                        mult = float(m.group(1))
                        cut = len(inner) - len(m.group(0))
                        del out[start + cut :]
                        del wts[start + cut :]
                    elif self.compel and (m2 := self._compel_suffix(j)) is not None:
                        mult, j = m2
                    elif self.a1111:
                        mult = A1111_STEP
                for k in range(start, len(wts)):
                    wts[k] *= mult
                i = j
                continue
            if self.compel and c in "+-" and out and out[-1].isalnum():
                m = re.match(r"\++|-+", s[i:])
                end = i + len(m.group(0))
                if end == len(s) or s[end] in _SUFFIX_END:
                    n = len(m.group(0))
                    mult = (COMPEL_UP if c == "+" else COMPEL_DOWN) ** n
                    k = len(out)
                    while k > 0 and out[k - 1].isalnum():
                        k -= 1
                    for t in range(k, len(wts)):
                        wts[t] *= mult
                    i = end
                    continue
            out.append(c)
            wts.append(1.0)
            i += 1
        return out, wts

    def _compel_suffix(self, j: int):
        """Compel's weight right after a ")": a number, or a run of "+" / "-"."""
        s = self.s
        m = re.match(r"\++|-+", s[j:])
        if m and (j + len(m.group(0)) == len(s) or s[j + len(m.group(0))] in _SUFFIX_END):
            n = len(m.group(0))
            return (COMPEL_UP if m.group(0)[0] == "+" else COMPEL_DOWN) ** n, j + n
        m = re.match(r"\d+\.?\d*|\.\d+", s[j:])
        if m:
            return float(m.group(0)), j + len(m.group(0))
        return None

    def _brackets(self) -> dict[int, int]:
        """Open index -> close index for each matched, unescaped ( ) or [ ] pair (a [ ] pair
        only where the syntax reads it); unmatched ones stay text."""
        s, match, stack = self.s, {}, []
        i = 0
        while i < len(s):
            c = s[i]
            if c == "\\" and i + 1 < len(s) and s[i + 1] in _ESCAPABLE:
                i += 2
                continue
            if c == "(" or (c == "[" and self.a1111):
                stack.append((c, i))
            elif c in ")]" and stack:
                want = "(" if c == ")" else "["
                if stack[-1][0] == want:
                    match[stack.pop()[1]] = i
                elif any(k == want for k, _ in stack):
                    # close the nearest opener of this kind; openers above it stay text
                    while stack[-1][0] != want:
                        stack.pop()
                    match[stack.pop()[1]] = i
            i += 1
        return match


def _num(w: float) -> str:
    return f"{_r(w):.4f}".rstrip("0").rstrip(".")


def _escape(text: str) -> str:
    """Brackets and backslashes escaped, and a "+"/"-" run ending a word (which would read
    as Compel's weight) escaped at its first character: "C++" -> "C\\++"."""
    text = re.sub(r"([()\[\]\\])", r"\\\1", text)
    return re.sub(r"(?<=[^\W_])([+-])(?=[+-]*(?:[\s,.;:!?)\]]|$))", r"\\\1", text)


def emit(prompt: str, words: Sequence[Word], weights: Sequence[float], syntax: str = "a1111"):
    """`prompt` (clean text) with each word whose weight is not 1 written in `syntax`
    ("a1111": ``(word:1.3)``; "compel": ``(word)1.3``); brackets in the text are escaped so
    that `parse_prompt(emit(...), "auto")` returns this text and these weights."""
    if syntax not in ("a1111", "compel"):
        raise ValueError(f"emit syntax must be 'a1111' or 'compel', got {syntax!r}")
    fmt = (
        (lambda t, w: f"({t}:{_num(w)})") if syntax == "a1111" else (lambda t, w: f"({t}){_num(w)}")
    )
    out, last = [], 0
    for w, wt in zip(words, weights):
        if _r(wt) == 1.0:
            continue
        out.append(_escape(prompt[last : w.start]))
        out.append(fmt(_escape(prompt[w.start : w.end]), wt))
        last = w.end
    out.append(_escape(prompt[last:]))
    return "".join(out)
