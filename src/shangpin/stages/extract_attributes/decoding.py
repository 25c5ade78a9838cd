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
    spans: list[tuple[TextField, int, int]],
    allowed: np.ndarray,
    trans: np.ndarray,
) -> list[Span]:
    """Spans over the words of one sequence (`logits`: one row per word). `allowed` masks labels to the
    category's attributes and O. The arg-max path is used when it is valid BIO; Viterbi only when it is not."""
    n = len(spans)
    if n == 0:
        return []
    logp = log_softmax(np.where(allowed[None, :], logits[:n], NEG))
    best = logp.argmax(axis=1)
    if not (best > 0).any():
        return []
    out: list[Span] = []
    i = 0
    while i < n:
        f = spans[i][0]
        j = i
        while j < n and spans[j][0] == f:
            j += 1
        path = best[i:j]
        if not _valid(path):
            path = viterbi(logp[i:j], trans)
        out.extend(_spans(path, logp[i:j], spans[i:j]))
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


def _spans(path: np.ndarray, logp: np.ndarray, where: list[tuple[TextField, int, int]]) -> list[Span]:
    out: list[Span] = []
    t = 0
    n = len(path)
    while t < n:
        lab = int(path[t])
        if lab == 0 or lab % 2 == 0:  # O, or a stray I- (cannot happen on a valid path)
            t += 1
            continue
        k = (lab - 1) // 2
        u = t + 1
        while u < n and int(path[u]) == 2 + 2 * k:
            u += 1
        lp = float(logp[np.arange(t, u), path[t:u]].mean())
        out.append(
            Span(
                attribute=k,
                field=where[t][0],
                start=where[t][1],
                end=where[u - 1][2],
                score=float(np.exp(lp)),
            )
        )
        t = u
    return out
