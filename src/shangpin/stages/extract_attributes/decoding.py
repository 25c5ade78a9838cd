"""Decoding the tagger's word labels into one span per attribute, with scores, and tidying span edges."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from shangpin.records import TextField
from shangpin.text import HAN, between_han, han_word_insides, has_han

_HAN_GAP = re.compile(f"[{HAN}]\\s+|\\s+[{HAN}]")
NO_CONTINUATION = -1e4
"""Log-odds of continuing a span across a barrier (finite, so that the span sums stay free of inf - inf)."""

MAX_WORDS = 16
"""Longest value in words (punctuation marks count as words) that decoding considers: 99.95 % of the OA-Mine
training values have at most 15."""


@dataclass(frozen=True, slots=True)
class Span:
    """A decoded span: attribute, field, character offsets and raw score (probability that the span, rather
    than nothing, is the attribute's value, under the tagger's word probabilities)."""

    attribute: int
    field: TextField
    start: int
    end: int
    score: float


def log_softmax(x: np.ndarray) -> np.ndarray:
    m = x.max(axis=-1, keepdims=True)
    z = x - m
    out: np.ndarray = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    return out


@dataclass(frozen=True)
class LabelSpace:
    """The labels one category may use: O plus B-/I- of its attributes (label ids O=0, B-k=2k+1, I-k=2k+2).

    Decoding works in this reduced space: a category has ~10 attributes out of ~50, so the softmax and the span
    search cost a fraction of what they would over every label.
    """

    cols: np.ndarray
    attributes: list[int]
    """Attribute index of each (B, I) column pair, in column order."""

    @classmethod
    def of(cls, allowed: np.ndarray) -> LabelSpace:
        cols = np.flatnonzero(allowed)
        return cls(cols=cols, attributes=[int(c - 1) // 2 for c in cols[1::2]])


def decode(
    logits: np.ndarray,
    spans: list[tuple[TextField, int, int]],
    space: LabelSpace,
    max_words: int = MAX_WORDS,
    extend_bonus: float = 0.0,
    barriers: np.ndarray | None = None,
    edge_costs: np.ndarray | None = None,
) -> list[Span]:
    """At most one span per attribute and field over the words of one sequence (`logits`: a row per word).

    A span i..j of attribute k scores the log-odds of "B-k at i, I-k up to j" against "not k" on those words,
    from the word probabilities: log p(B-k, i) + sum log p(I-k, t) - sum log(1 - p(B-k, t) - p(I-k, t)).
    Each attribute takes its best span when that beats no span (log-odds > 0); spans of different attributes
    never overlap (the better one keeps its words, the other looks again outside them). Against arg-max BIO
    labels this weighs a whole span at once, so one unsure word inside a value no longer cuts it short
    (+0.8 micro-F1 on the OA-Mine dev split, docs/BENCHMARKS.md). `extend_bonus` is added to the log-odds of
    each word a span continues over: a tagger that under-rates the inside of values it has not seen cuts them short.
    `barriers` (bool per word, optional): no span continues into a word marked True (see `EdgeRules.barriers`).
    `edge_costs` (float per word, optional): log-odds taken off a span that begins at that word or ends just
    before it (see `EdgeRules.edge_costs`).
    """
    out: list[Span] = []
    start = 0
    for end in range(1, len(spans) + 1):
        # Title and description words in one sequence are decoded apart: an attribute may be found in each
        # (the caller keeps the title's place when both hold the same value), and no span crosses between them.
        if end == len(spans) or spans[end][0] != spans[start][0]:
            stops = barriers[start:end] if barriers is not None else None
            costs = edge_costs[start:end] if edge_costs is not None else None
            out.extend(
                _decode_run(logits[start:end], spans[start:end], space, max_words, extend_bonus, stops, costs)
            )
            start = end
    return out


def _decode_run(
    logits: np.ndarray,
    spans: list[tuple[TextField, int, int]],
    space: LabelSpace,
    max_words: int,
    extend_bonus: float = 0.0,
    barriers: np.ndarray | None = None,
    edge_costs: np.ndarray | None = None,
) -> list[Span]:
    """`decode` over words of one field."""
    n = len(spans)
    if n == 0 or len(space.cols) < 3:
        return []
    logp = log_softmax(logits[:n, space.cols])
    p = np.exp(logp)
    rest = np.log(np.maximum(1.0 - p[:, 1::2] - p[:, 2::2], 1e-9))  # log p(not this attribute), n x K
    sb = logp[:, 1::2] - rest
    si = logp[:, 2::2] - rest + extend_bonus
    if barriers is not None and barriers.any():
        si[barriers[:n]] = NO_CONTINUATION
    # An attribute can only win if its best start plus every helpful continuation beats no span: most of a
    # category's attributes are absent from a title and drop out here.
    live = np.flatnonzero(sb.max(axis=0) + np.maximum(si, 0.0).sum(axis=0) > 0.0)
    if live.size == 0:
        return []
    sb, si = sb[:, live], si[:, live]
    w = min(max_words, n)
    csum = np.concatenate([np.zeros((1, live.size), dtype=si.dtype), np.cumsum(si, axis=0)])
    starts = np.arange(n)
    ends = starts[:, None] + np.arange(w)[None, :]  # span (i, d) covers words i..i+d
    inside = ends < n
    ends = np.minimum(ends, n - 1)
    score = sb[:, None, :] + csum[ends + 1] - csum[starts + 1][:, None, :]  # n x w x K'
    if edge_costs is not None:
        after = np.append(edge_costs[1:n], 0.0)  # cost of ending at word j: an edge before word j + 1
        score -= (edge_costs[:n][:, None] + after[ends])[:, :, None]
    score[~inside] = -np.inf
    flat = score.reshape(n * w, live.size)
    best_at = flat.argmax(axis=0)
    best = best_at.tolist()
    best_score = flat[best_at, np.arange(live.size)].tolist()
    used = np.zeros(n, dtype=bool)
    out: list[Span] = []
    pending = sorted((k for k in range(live.size) if best_score[k] > 0.0), key=lambda k: -best_score[k])
    while pending:
        k = pending.pop(0)
        i, d = divmod(best[k], w)
        j = i + d
        if used[i : j + 1].any():
            # Its best span overlaps a surer attribute's: look again outside the words taken, in turn.
            taken = np.concatenate([[0], np.cumsum(used)])  # taken[t + 1] - taken[i]: used words in i..t
            free = (taken[ends + 1] - taken[starts][:, None]) == 0
            cand = np.where(free & inside, score[:, :, k], -np.inf).reshape(-1)
            best[k] = int(cand.argmax())
            best_score[k] = float(cand[best[k]])
            if best_score[k] > 0.0:
                pending.append(k)
                pending.sort(key=lambda a: -best_score[a])
            continue
        used[i : j + 1] = True
        sc = best_score[k]
        out.append(
            Span(
                attribute=space.attributes[live[k]],
                field=spans[i][0],
                start=spans[i][1],
                end=spans[j][2],
                score=1.0 / (1.0 + math.exp(-sc)) if sc < 700 else 1.0,
            )
        )
    return out


@dataclass(frozen=True)
class EdgeRules:
    """How values may begin and end, learned from the training values.

    The tagger works on words, and punctuation is a word of its own, so a span can take in a separator that no
    value carries ("Rainbow Light -", "Low Acid,") or stop inside a bracket ("43 EU (US Men's 10 M" for
    "43 EU (US Men's 10 M)"). A non-alphanumeric character may end (or begin) a value only if enough training
    values end (begin) with it (see `learn`); brackets are balanced when the text allows.
    """

    ends: frozenset[str] = frozenset()
    starts: frozenset[str] = frozenset()
    split_han_gaps: bool = False
    """No value continues across a space beside a Chinese character ("麻辣烫 关东煮" holds two words, not one
    value): learned, true when under 1 % of the training values with Chinese characters do so."""
    segment_cost: float = 0.0
    """Log-odds against a value edge that falls inside a jieba word of a Chinese run ("级酱肉" for 酱肉 in
    特级酱肉): how much likelier training values' edges fall between jieba words than positions in general do
    (learned; 0 = none)."""

    @classmethod
    def learn(cls, examples: Iterable[tuple[str, str]], min_share: float = 0.2) -> EdgeRules:
        """Rules from (text, value) pairs: a character may end a value when values end with it in at least
        `min_share` of the cases where it touches a value's end (inside: "50+"; outside: "Crocs," or "Acid,"),
        likewise for beginnings."""
        inside: dict[tuple[str, str], int] = {}
        outside: dict[tuple[str, str], int] = {}
        han_values = han_gapped = 0
        at_cut = in_word = 0  # value edges between two ideographs: at a jieba cut, inside a jieba word
        insides: dict[str, set[int]] = {}

        def bump(d: dict[tuple[str, str], int], key: tuple[str, str]) -> None:
            d[key] = d.get(key, 0) + 1

        for text, value in examples:
            value = value.strip()
            if not value:
                continue
            at = text.find(value)
            if has_han(value):
                han_values += 1
                han_gapped += _HAN_GAP.search(value) is not None
                if at >= 0:
                    if text not in insides:
                        insides[text] = han_word_insides(text)
                    for edge in (at, at + len(value)):
                        if between_han(text, edge):
                            in_word += edge in insides[text]
                            at_cut += edge not in insides[text]
            if not value[-1].isalnum():
                bump(inside, ("end", value[-1]))
            if not value[0].isalnum():
                bump(inside, ("start", value[0]))
            if at < 0:
                continue
            after = text[at + len(value) : at + len(value) + 2].strip()[:1]
            before = text[max(0, at - 2) : at].strip()[-1:]
            if after and not after.isalnum():
                bump(outside, ("end", after))
            if before and not before.isalnum():
                bump(outside, ("start", before))

        def allowed(side: str) -> frozenset[str]:
            return frozenset(
                c
                for (s, c), n in inside.items()
                if s == side and n >= 2 and n >= min_share * (n + outside.get((s, c), 0))
            )

        split = han_values >= 20 and han_gapped < 0.01 * han_values
        cost = 0.0
        if at_cut + in_word >= 20:
            # Against the base rate: how often any position between two ideographs is a jieba cut.
            every = [e not in c for t, c in insides.items() for e in range(1, len(t)) if between_han(t, e)]
            base = sum(every)
            cost = math.log((at_cut + 1) / (in_word + 1)) - math.log((base + 1) / (len(every) - base + 1))
        return cls(
            ends=allowed("end"), starts=allowed("start"), split_han_gaps=split, segment_cost=max(cost, 0.0)
        )

    def edge_costs(
        self, text_of: Callable[[TextField], str], words: Sequence[tuple[TextField, int, int]]
    ) -> np.ndarray | None:
        """Per word (field, start, end), the cost (`segment_cost`) of a value edge just before it, where that
        edge would split a jieba word of a Chinese run; None when no word has one."""
        if self.segment_cost <= 0.0:
            return None
        out = np.zeros(len(words))
        insides: dict[TextField, set[int]] = {}
        for w, (f, start, _) in enumerate(words):
            if f not in insides:
                insides[f] = han_word_insides(text_of(f))
            if start in insides[f]:
                out[w] = self.segment_cost
        return out if out.any() else None

    def barriers(
        self, text_of: Callable[[TextField], str], words: Sequence[tuple[TextField, int, int]]
    ) -> np.ndarray | None:
        """Per word (field, start, end) of a sequence, whether a value may not continue into it from the word
        before (see `split_han_gaps`); None when nothing is barred. `text_of` gives a field's text."""
        if not self.split_han_gaps:
            return None
        out = np.zeros(len(words), dtype=bool)
        texts: dict[TextField, str] = {}
        for w in range(1, len(words)):
            (f0, _, end), (f, start, _) = words[w - 1], words[w]
            if f0 != f or start <= end:
                continue
            text = texts[f] if f in texts else texts.setdefault(f, text_of(f))
            out[w] = _HAN_GAP.search(text, max(end - 1, 0), min(start + 1, len(text))) is not None
        return out if out.any() else None

    def tidy(self, text: str, start: int, end: int) -> tuple[int, int]:
        """The span with brackets balanced and edge characters no training value has trimmed; an empty span
        (start == end) when nothing is left."""
        start, end = self._balance(text, start, end)
        while start < end and (
            text[start].isspace() or not (text[start].isalnum() or text[start] in self.starts)
        ):
            start += 1
        while end > start and (
            text[end - 1].isspace() or not (text[end - 1].isalnum() or text[end - 1] in self.ends)
        ):
            end -= 1
        if start < end and text.count("(", start, end) != text.count(")", start, end):
            start, end = self._balance(text, start, end)
        return start, end

    @staticmethod
    def _balance(text: str, start: int, end: int) -> tuple[int, int]:
        span = text[start:end]
        opened = span.count("(") - span.count(")")
        if opened > 0:
            # An open bracket closed just after the span (within 40 characters, before any new bracket): take it in.
            close = text.find(")", end)
            if 0 <= close < end + 40 and "(" not in text[end:close]:
                return start, close + 1
            cut = span.rfind("(")
            return start, start + len(span[:cut].rstrip())
        if opened < 0:
            # A bracket closed inside the span but opened just before it: take the opening in, else cut there.
            open_ = text.rfind("(", max(0, start - 40), start)
            if open_ >= 0 and ")" not in text[open_:start]:
                return open_, end
            cut = span.find(")")
            return (start + cut + 1, end) if cut == 0 else (start, start + len(span[:cut].rstrip()))
        return start, end
