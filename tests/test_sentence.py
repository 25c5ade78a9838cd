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


def test_minilm_with_calibration_texts_is_static_int8_and_encodes_in_batches(tmp_path: Path) -> None:
    from shangpin.sentence import load_sentence_encoder

    static = MiniLMSentenceEncoder.export(tmp_path / "static", calibration_texts=TEXTS * 4)
    fp32 = MiniLMSentenceEncoder.export(tmp_path / "fp32", quantize=False)
    # Fixed ranges let texts share a call; a dynamic graph (the test above) keeps one text per call.
    assert static.batch_size == 64 and fp32.batch_size == 1
    static.save(tmp_path / "saved")
    assert load_sentence_encoder("minilm", tmp_path / "saved").batch_size == 64  # type: ignore[attr-defined]
    together = static.encode(TEXTS)
    alone = np.vstack([static.encode([t]) for t in TEXTS])
    assert (together * alone).sum(axis=1).min() > 0.99999
    cosine = (together * fp32.encode(TEXTS)).sum(axis=1)
    assert cosine[:4].min() > 0.985 and cosine.min() > 0.97  # product titles; then "x" and ""
