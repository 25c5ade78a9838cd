"""The two tag models the recommender fuses: one-vs-rest logistic regression and an omikuji (Bonsai) tree.

Both read the same sparse TF-IDF rows and return a dense (products x tags) score matrix in [0, 1], so fusion is
a weighted mean. Logistic regression is exact per tag but costs one solver run per tag; omikuji's label tree costs
about log(tags), which is what lets the stage scale to tens of thousands of tags (`max_linear_tags`).
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from scipy import sparse


class LinearTagModel:
    """One-vs-rest logistic regression (liblinear) over TF-IDF rows; tags without a negative get a constant."""

    def __init__(self, C: float, n_jobs: int = 1) -> None:
        self.C = C
        self.n_jobs = n_jobs
        self.model: Any = None

    def fit(self, X: sparse.csr_matrix, Y: np.ndarray) -> LinearTagModel:
        from sklearn.linear_model import LogisticRegression
        from sklearn.multiclass import OneVsRestClassifier

        X = X.copy()
        X.sort_indices()  # liblinear in worker processes cannot sort a read-only matrix itself
        self.model = OneVsRestClassifier(LogisticRegression(solver="liblinear", C=self.C), n_jobs=self.n_jobs)
        # uint8, not int8: scikit-learn 1.9's one-vs-rest silently learns wrong columns from a signed int8 matrix.
        self.model.fit(X, np.asarray(Y, dtype=np.uint8))
        return self

    def scores(self, X: sparse.csr_matrix) -> np.ndarray:
        out: np.ndarray = self.model.predict_proba(X)
        return out.astype(np.float32)


class TreeTagModel:
    """omikuji's partitioned label trees (Bonsai settings: wide, shallow, unbalanced clusters), Annif's XMC backend.

    Args:
        top_k: tags scored per product (the rest get 0).
        bonsai: Bonsai (cluster_k 100, depth 3, unbalanced) instead of Parabel (binary balanced) trees.
    """

    def __init__(self, top_k: int = 50, bonsai: bool = True, n_threads: int = 1) -> None:
        self.top_k = top_k
        self.bonsai = bonsai
        self.n_threads = n_threads
        self.model: Any = None
        self.n_tags = 0

    def fit(self, X: sparse.csr_matrix, Y: np.ndarray) -> TreeTagModel:
        import omikuji

        self.n_tags = Y.shape[1]
        with tempfile.TemporaryDirectory() as tmp:
            data = Path(tmp) / "train.txt"
            write_xmc(data, X, Y)
            hp = omikuji.Model.default_hyper_param()
            if self.bonsai:
                hp.cluster_balanced = False
                hp.cluster_k = 100
                hp.max_depth = 3
                hp.collapse_every_n_layers = 0
            with quiet_native_output():
                self.model = omikuji.Model.train_on_data(str(data), hp, n_threads=self.n_threads)
        return self

    def scores(self, X: sparse.csr_matrix) -> np.ndarray:
        out = np.zeros((X.shape[0], self.n_tags), dtype=np.float32)
        for i in range(X.shape[0]):
            lo, hi = X.indptr[i], X.indptr[i + 1]
            if lo == hi:
                continue
            pairs = list(zip(X.indices[lo:hi].tolist(), X.data[lo:hi].tolist(), strict=True))
            for tag, score in self.model.predict(pairs, top_k=self.top_k):
                out[i, tag] = score
        return out

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        with quiet_native_output():
            self.model.save(str(folder))

    def load(self, folder: Path, n_tags: int) -> None:
        import omikuji

        with quiet_native_output():
            self.model = omikuji.Model.load(str(folder))
        self.n_tags = n_tags

    def __getstate__(self) -> dict[str, Any]:  # the Rust model is saved on its own (save/load)
        return {k: v for k, v in self.__dict__.items() if k != "model"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.model = None


def write_xmc(path: Path, X: sparse.csr_matrix, Y: np.ndarray) -> None:
    """The extreme-classification repository text format omikuji reads ("n_rows n_features n_labels" header,
    then "l1,l2 f:v f:v" per row; a row without features must not end in a space, and a row without labels
    starts with one, or omikuji reads its first feature as a label and fails to load the file)."""
    with open(path, "w", encoding="ascii") as fh:
        fh.write(f"{X.shape[0]} {X.shape[1]} {Y.shape[1]}\n")
        for i in range(X.shape[0]):
            labels = ",".join(str(j) for j in np.flatnonzero(Y[i]))
            lo, hi = X.indptr[i], X.indptr[i + 1]
            feats = " ".join(f"{c}:{v:.6g}" for c, v in zip(X.indices[lo:hi], X.data[lo:hi], strict=True))
            fh.write(f"{labels} {feats}".rstrip() + "\n")


@contextlib.contextmanager
def quiet_native_output() -> Iterator[None]:
    """Silence omikuji's Rust logger and progress bars: they write INFO lines to file descriptor 1 (and bars to 2)
    whatever RUST_LOG says, which would corrupt JSON a command prints on stdout."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)
