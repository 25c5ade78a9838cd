"""Constrained BIO decoding: Viterbi over allowed labels, spans with scores."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from shangpin.records import TextField

NEG = -1e9


@dataclass(frozen=True, slots=True)
class Span:
    """A decoded span: attribute, field, character offsets and raw score (geometric mean token probability)."""

    attribute: int
    field: TextField
    start: int
    end: int
    score: float


def transitions(n_attributes: int) -> np.ndarray:
    """L x L matrix (0 allowed, NEG forbidden): I-k may only follow B-k or I-k. Labels: O, B-0, I-0, B-1, ..."""
    n = 1 + 2 * n_attributes
    t = np.zeros((n, n), dtype=np.float32)
    for k in range(n_attributes):
        i_k = 2 + 2 * k
        t[:, i_k] = NEG
        t[1 + 2 * k, i_k] = 0.0
        t[i_k, i_k] = 0.0
    return t


def log_softmax(x: np.ndarray) -> np.ndarray:
    m = x.max(axis=-1, keepdims=True)
    z = x - m
    out: np.ndarray = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    return out


@dataclass(frozen=True)
class LabelSpace:
    """The labels one category may use (O plus B-/I- of its attributes), with the transitions among them.

    Decoding works in this reduced space: a category has ~10 attributes out of ~50, so Viterbi and the softmax
    cost a few percent of what they would over every label.
    """

    cols: np.ndarray
    trans: np.ndarray
    start: np.ndarray

    @classmethod
    def of(cls, allowed: np.ndarray, trans: np.ndarray) -> LabelSpace:
        cols = np.flatnonzero(allowed)
        start = np.where((cols > 0) & (cols % 2 == 0), NEG, 0.0).astype(np.float32)
        return cls(cols=cols, trans=trans[np.ix_(cols, cols)], start=start)


def viterbi(logp: np.ndarray, trans: np.ndarray, start: np.ndarray | None = None) -> np.ndarray:
    """Best label path for one run of tokens (T x L log-probabilities); a run may not start with I-."""
    t_len, n = logp.shape
    if start is None:
        start = np.zeros(n, dtype=np.float32)
        start[2::2] = NEG
    score = logp[0] + start
    back = np.zeros((t_len, n), dtype=np.int32)
    for t in range(1, t_len):
        cand = score[:, None] + trans
        back[t] = cand.argmax(axis=0)
        score = cand.max(axis=0) + logp[t]
    path = np.zeros(t_len, dtype=np.int32)
    path[-1] = int(score.argmax())
    for t in range(t_len - 1, 0, -1):
        path[t - 1] = back[t, path[t]]
    return path


def decode(logits: np.ndarray, spans: list[tuple[TextField, int, int]], space: LabelSpace) -> list[Span]:
    """Spans over the words of one sequence (`logits`: one row per word, all labels).

    The arg-max path is used when it is valid BIO; Viterbi runs only when it is not.
    """
    n = len(spans)
    if n == 0:
        return []
    logp = log_softmax(logits[:n, space.cols])
    best = logp.argmax(axis=1)
    if not best.any():
        return []
    out: list[Span] = []
    i = 0
    while i < n:
        f = spans[i][0]
        j = i
        while j < n and spans[j][0] == f:
            j += 1
        path = best[i:j]
        if not _valid(space.cols[path]):
            path = viterbi(logp[i:j], space.trans, space.start)
        chosen = logp[np.arange(i, j), path].tolist()
        out.extend(_spans(space.cols[path].tolist(), chosen, spans[i:j]))
        i = j
    return out


def _valid(path: np.ndarray) -> bool:
    """True when every I-k follows B-k or I-k (labels: O=0, B-k=2k+1, I-k=2k+2)."""
    is_i = (path > 0) & (path % 2 == 0)
    if not is_i.any():
        return True
    prev = np.concatenate(([0], path[:-1]))
    ok = (prev == path) | (prev == path - 1)
    return bool(np.all(ok[is_i]))


def _spans(path: list[int], chosen: list[float], where: list[tuple[TextField, int, int]]) -> list[Span]:
    """Spans of a valid path; score = geometric mean of the chosen labels' probabilities."""
    out: list[Span] = []
    t = 0
    n = len(path)
    while t < n:
        lab = path[t]
        if lab == 0 or lab % 2 == 0:  # O, or a stray I- (cannot happen on a valid path)
            t += 1
            continue
        k = (lab - 1) // 2
        u = t + 1
        while u < n and path[u] == 2 + 2 * k:
            u += 1
        score = math.exp(sum(chosen[t:u]) / (u - t))
        out.append(Span(attribute=k, field=where[t][0], start=where[t][1], end=where[u - 1][2], score=score))
        t = u
    return out


@dataclass(frozen=True)
class EdgeRules:
    """How values may begin and end, learned from the training values.

    The tagger works on words, and punctuation is a word of its own, so a span can take in a separator that no
    value carries ("Rainbow Light -", "Low Acid,") or stop inside a bracket ("43 EU (US Men's 10 M" for
    "43 EU (US Men's 10 M)"). A non-alphanumeric character may end (or begin) a value only if at least
    `min_count` training values end (begin) with it; brackets are balanced when the text allows.
    """

    ends: frozenset[str] = frozenset()
    starts: frozenset[str] = frozenset()

    @classmethod
    def learn(cls, examples: Iterable[tuple[str, str]], min_share: float = 0.2) -> EdgeRules:
        """Rules from (text, value) pairs: a character may end a value when values end with it in at least
        `min_share` of the cases where it touches a value's end (inside: "50+"; outside: "Crocs," or "Acid,"),
        likewise for beginnings."""
        inside: dict[tuple[str, str], int] = {}
        outside: dict[tuple[str, str], int] = {}

        def bump(d: dict[tuple[str, str], int], key: tuple[str, str]) -> None:
            d[key] = d.get(key, 0) + 1

        for text, value in examples:
            value = value.strip()
            if not value:
                continue
            if not value[-1].isalnum():
                bump(inside, ("end", value[-1]))
            if not value[0].isalnum():
                bump(inside, ("start", value[0]))
            at = text.find(value)
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

        return cls(ends=allowed("end"), starts=allowed("start"))

    def tidy(self, text: str, start: int, end: int) -> tuple[int, int]:
        """The span with brackets balanced and edge characters no training value has trimmed; (start, start)
        when nothing is left."""
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
