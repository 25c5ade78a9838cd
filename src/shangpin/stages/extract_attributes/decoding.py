"""Constrained BIO decoding: Viterbi over allowed labels, spans with scores."""

from __future__ import annotations

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


def viterbi(logp: np.ndarray, trans: np.ndarray) -> np.ndarray:
    """Best label path for one run of tokens (T x L log-probabilities); a run may not start with I-."""
    t_len, n = logp.shape
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


def decode(
    logits: np.ndarray,
    where: list[tuple[TextField, int, int] | None],
    allowed: np.ndarray,
    trans: np.ndarray,
) -> list[Span]:
    """Spans in one sequence. `allowed` is a boolean mask over labels (the category's attributes and O)."""
    n_tok = len(where)
    x = np.where(allowed[None, :], logits[:n_tok], NEG)
    logp = log_softmax(x)
    spans: list[Span] = []
    i = 0
    while i < n_tok:
        if where[i] is None:
            i += 1
            continue
        f = where[i][0]  # type: ignore[index]
        j = i
        while j < n_tok and where[j] is not None and where[j][0] == f:  # type: ignore[index]
            j += 1
        path = viterbi(logp[i:j], trans)
        spans.extend(_spans(path, logp[i:j], where[i:j]))
        i = j
    return spans


def _spans(path: np.ndarray, logp: np.ndarray, where: list[tuple[TextField, int, int] | None]) -> list[Span]:
    out: list[Span] = []
    t = 0
    n = len(path)
    while t < n:
        lab = int(path[t])
        if lab == 0 or lab % 2 == 0:  # O, or a stray I- (cannot happen after Viterbi)
            t += 1
            continue
        k = (lab - 1) // 2
        u = t + 1
        while u < n and int(path[u]) == 2 + 2 * k:
            u += 1
        lp = float(np.mean([logp[s, int(path[s])] for s in range(t, u)]))
        first, last = where[t], where[u - 1]
        assert first is not None and last is not None
        out.append(Span(attribute=k, field=first[0], start=first[1], end=last[2], score=float(np.exp(lp))))
        t = u
    return out
