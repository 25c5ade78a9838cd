"""Sentence encoders: a text's vector does not depend on the batch it is encoded in."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from shangpin.sentence import MiniLMSentenceEncoder

TEXTS = [
    "Crocs Women's Jayna Ballet Flat, Nautical Navy, 4 M US",
    "Folgers Classic Roast Ground Coffee, Medium Roast, 25.9 Ounce",
    "3M Disposable Dust Mask 8210, N95, 20 Pack",
    "Oral-B Pro 1000 Rechargeable Electric Toothbrush",
    "x",
    "",
]


def test_minilm_vectors_do_not_depend_on_the_batch(tmp_path: Path) -> None:
    encoder = MiniLMSentenceEncoder.export(tmp_path)
    together = encoder.encode(TEXTS)
    alone = np.vstack([encoder.encode([t]) for t in TEXTS])
    assert together.shape == (len(TEXTS), encoder.dim)
    assert np.allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    assert (together * alone).sum(axis=1).min() > 0.99999
