"""Keyphrase tags for what a tag vocabulary does not cover: extractive, scored with the encoder (EmbedRank idea).

Candidates are word n-grams (1-3 words) of the title that neither start nor end with a stop word, are not only
digits, and hold no word of a vocabulary tag (singular or plural): what the vocabulary already says is returned
as a vocabulary tag. The title and its candidates go through the encoder as one batch (mean-pooled sentence
vectors, as KeyBERT does); a candidate scores its cosine to the title. Maximal marginal relevance (lambda 0.7)
keeps the chosen phrases from repeating each other. The shipped MiniLM
reads English only; titles in other scripts yield no keyphrases.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from shangpin.normalize import value_key
from shangpin.records import Product

_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9'&+.-]*[A-Za-z0-9+]|[A-Za-z0-9]")
STOP = frozenset(
    """a an and at by for from in into of on or the to with without is are be as this that these those it its
    set pack pcs piece pieces new size sizes x vs per""".split()
)
MMR_LAMBDA = 0.7
MAX_WORDS = 3


def _singular(key: str) -> str:
    for suffix in ("ies", "es", "s"):
        if key.endswith(suffix) and len(key) > len(suffix) + 2:
            return key[: -len(suffix)] + ("y" if suffix == "ies" else "")
    return key


def known_words(tags: Sequence[str]) -> set[str]:
    """The singular keys of every word of the vocabulary's tags ("Track Pants" -> {"track", "pant"})."""
    return {_singular(value_key(w)) for t in tags for w in _WORD.findall(t)} | {
        _singular(value_key(t)) for t in tags
    }


def candidates(title: str, known: set[str]) -> list[tuple[str, int, int]]:
    """(phrase, start char, end char) candidates of `title`, see the module docstring; `known` from known_words."""
    words = [(m.group(), m.start(), m.end()) for m in _WORD.finditer(title)]
    out: list[tuple[str, int, int]] = []
    seen: set[str] = set()
    for n in range(1, MAX_WORDS + 1):
        for i in range(len(words) - n + 1):
            span = words[i : i + n]
            first, last = span[0][0].casefold(), span[-1][0].casefold()
            if first in STOP or last in STOP or all(w.replace(".", "").isdigit() for w, _, _ in span):
                continue
            phrase = title[span[0][1] : span[-1][2]]
            key = value_key(phrase)
            if len(key) < 3 or key in seen:
                continue
            seen.add(key)
            if _singular(key) in known or any(_singular(value_key(w)) in known for w, _, _ in span):
                continue
            out.append((phrase, span[0][1], span[-1][2]))
    return out


class KeyphraseExtractor:
    """Ranks a title's candidate phrases by cosine to the title in the encoder's contextual token space.

    Args:
        encoder: checkpoint folder ("" = the shipped MiniLM), run with torch.
        known: the vocabulary's words (`known_words`); phrases holding one are not candidates.
        max_length: tokens read per title.
        onnx_folder: a folder holding the encoder as a `MiniLMSentenceEncoder` ONNX export (written by
            `shangpin export`); when given it replaces the torch checkpoint, so predicting needs no torch.
    """

    def __init__(
        self,
        encoder: str = "",
        known: set[str] | None = None,
        max_length: int = 64,
        onnx_folder: Path | None = None,
    ) -> None:
        self.encoder = encoder
        self.known = known or set()
        self.max_length = max_length
        self.onnx_folder = onnx_folder
        self._model: Any = None
        self._tokenizer: Any = None
        self._onnx: Any = None

    def _load(self) -> None:
        if self.onnx_folder is not None:
            from shangpin.sentence import MiniLMSentenceEncoder as Encoder

            # One run for all of a title's phrases, on one thread, as with torch below; batching is safe with int8
            # dynamic ranges here: a title's phrases always share their batch, so its keyphrases stay its own.
            # The tags stage on MWPD titles, 2 shared cores: int8 57 titles/s batched on one thread (33 with one
            # phrase per run), fp32 25 (7), torch 17 (docs/BENCHMARKS.md, "Export and quantisation").
            self._onnx = Encoder(
                self.onnx_folder / Encoder.ONNX_FILE,
                self.onnx_folder / Encoder.TOKENIZER_FILE,
                max_length=self.max_length,
                batch_size=64,
                threads=1,
            )
            self._model = self._onnx
            return
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        from shangpin.encoders import resolve_encoder

        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # "Loading weights" bars would clutter every predict
        path = resolve_encoder(self.encoder)
        self._tokenizer = AutoTokenizer.from_pretrained(str(path))
        self._model = AutoModel.from_pretrained(str(path)).eval()

    def _embed(self, texts: list[str]) -> np.ndarray:
        """Mean-pooled, L2-normalised encoder vectors (the sentence-transformers pooling of all-MiniLM-L6-v2)."""
        if self._onnx is not None:
            vectors: np.ndarray = self._onnx.encode(texts)
            return vectors
        import torch

        enc = self._tokenizer(
            texts, truncation=True, max_length=self.max_length, padding=True, return_tensors="pt"
        )
        # One thread: these matrices are tiny, and on busy cores a second thread's synchronisation made a forward
        # pass 30x slower (0.50 s vs 0.017 s for one title, measured under load).
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with torch.inference_mode():
                hidden = self._model(**enc).last_hidden_state
        finally:
            torch.set_num_threads(threads)
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled: np.ndarray = ((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).numpy()
        out: np.ndarray = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-9)
        return out

    def extract(self, products: Sequence[Product], k: int, min_score: float) -> list[list[tuple[str, float]]]:
        """Per product, at most `k` (phrase, score) best first; one title at a time, so a product's keyphrases
        never depend on its batch."""
        out: list[list[tuple[str, float]]] = []
        for product in products:
            cands = candidates(product.title, self.known)
            out.append(self._rank(product.title, cands, k, min_score) if cands else [])
        return out

    def _rank(
        self, title: str, cands: list[tuple[str, int, int]], k: int, min_score: float
    ) -> list[tuple[str, float]]:
        if self._model is None:
            self._load()
        phrases = [c[0] for c in cands]
        # The title alone, then the short phrases together: padding phrases to the title's length would cost
        # several times more.
        d = self._embed([title])[0]
        V = self._embed(phrases)
        relevance = V @ d
        chosen: list[int] = []
        while len(chosen) < min(k, len(phrases)):
            redundancy = (V @ V[chosen].T).max(1) if chosen else np.zeros(len(phrases))
            mmr = MMR_LAMBDA * relevance - (1 - MMR_LAMBDA) * redundancy
            mmr[chosen] = -np.inf
            j = int(np.argmax(mmr))
            if relevance[j] < min_score:
                break
            chosen.append(j)
        return sorted(((phrases[j], float(relevance[j])) for j in chosen), key=lambda x: -x[1])
