"""The Stage contract every pipeline stage implements (spaCy's predict/set_annotations split, sklearn params)."""

from __future__ import annotations

import abc
import inspect
import json
import logging
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, Self, TypeVar

from shangpin._util import atomic_write, batched
from shangpin.errors import ConfigError, IncompatibleModelError, NotFittedError
from shangpin.records import Event, Product

P = TypeVar("P")
T = TypeVar("T")
log = logging.getLogger(__name__)

META_FILE = "meta.json"


@dataclass
class StageReport:
    """What a stage's evaluation found: scalar metrics plus tables for the report.

    Attributes:
        metrics: stable snake_case metric name -> value (percent for P/R/F1).
        tables: table title -> rows (dicts with the same keys), rendered as they are.
        notes: short sentences shown under the tables.
        figures: figure title -> inline SVG markup (e.g. a confusion matrix), embedded in the HTML report.
    """

    stage: str
    metrics: dict[str, float] = field(default_factory=dict)
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    figures: dict[str, str] = field(default_factory=dict)


class Params:
    """sklearn's estimator parameter protocol: `get_params`, `set_params`, a readable repr; `sklearn.base.clone`
    works on it.

    Not `sklearn.base.BaseEstimator` itself: importing sklearn pulls in scipy, about 1.5 s on every CLI start,
    which a 500 titles/s `predict` command cannot afford.
    """

    legacy_params: ClassVar[dict[str, Any]] = {}
    """Values for parameters that a model saved before they existed must load with (so that it predicts as it did),
    where they differ from today's defaults."""

    @classmethod
    def _param_defaults(cls) -> dict[str, Any]:
        sig = inspect.signature(cls.__init__)
        return {p.name: p.default for p in sig.parameters.values() if p.kind is p.KEYWORD_ONLY}

    @classmethod
    def _param_names(cls) -> list[str]:
        return sorted(cls._param_defaults())

    def get_params(self, deep: bool = False) -> dict[str, Any]:
        """Hyperparameters by name (the keyword-only arguments of __init__)."""
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params: Any) -> Self:
        """Set hyperparameters; unknown names raise ValueError listing the valid ones."""
        valid = self._param_names()
        for key, value in params.items():
            if key not in valid:
                raise ValueError(f"invalid parameter {key!r} for {type(self).__name__}; valid: {valid}")
            setattr(self, key, value)
        return self

    def __repr__(self) -> str:
        defaults = self._param_defaults()
        changed = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items() if defaults.get(k) != v)
        return f"{type(self).__name__}({changed})"


class Stage(Params, abc.ABC, Generic[P]):
    """Base for pipeline stages. `__init__` only stores keyword hyperparameters (sklearn convention).

    Subclasses set `name` (registry key), `task` (the `--task` word), `version` (bump when the saved format
    changes), `requires` (Product fields read) and `assigns` (Product fields written), and implement
    `fit`, `predict`, `annotate`, `evaluate`, `_save_state` and `_load_state`.
    """

    name: ClassVar[str]
    task: ClassVar[str]
    version: ClassVar[int] = 1
    requires: ClassVar[tuple[str, ...]] = ()
    assigns: ClassVar[tuple[str, ...]] = ()
    headline_metric: ClassVar[str] = "micro_f1"
    """The metric (a key of StageReport.metrics, higher is better) summarising quality."""
    test_params: ClassVar[dict[str, Any]] = {}
    """Hyperparameters small enough for the contract tests to fit the tiny test data in seconds."""

    # Filled by fit/load; kept in meta.json.
    train_info_: dict[str, Any]

    @abc.abstractmethod
    def fit(self, products: Sequence[Product], events: Sequence[Event] = ()) -> Self:
        """Learn from products whose gold fields are filled; refitting forgets the previous fit."""

    @abc.abstractmethod
    def predict(self, products: Sequence[Product]) -> list[P]:
        """Predict for a batch without modifying it."""

    @abc.abstractmethod
    def annotate(self, products: Sequence[Product], preds: Sequence[P]) -> None:
        """Write predictions into the fields named in `assigns`; the only method that mutates products."""

    @abc.abstractmethod
    def evaluate(self, gold: Sequence[Product], pred: Sequence[Product]) -> StageReport:
        """Compare annotated copies `pred` with `gold` (same order) using the metrics of docs/metrics.md."""

    @abc.abstractmethod
    def is_fitted(self) -> bool:
        """Whether predict can run."""

    @abc.abstractmethod
    def _save_state(self, path: Path) -> None:
        """Write the learned state into the folder `path` (which exists)."""

    @abc.abstractmethod
    def _load_state(self, path: Path) -> None:
        """Read the learned state written by `_save_state`."""

    def _require(self, checks: Iterable[tuple[bool, str]]) -> None:
        """Raise ConfigError with the message of the first failed (condition, message) hyperparameter check."""
        for ok, message in checks:
            if not ok:
                raise ConfigError(message, stage=self.name)

    def check_fitted(self) -> None:
        """Raise NotFittedError unless the stage can predict."""
        if not self.is_fitted():
            raise NotFittedError(
                "no trained model: call fit() or load a model directory first "
                f"(e.g. 'shangpin train --task {self.task} ...')",
                stage=self.name,
            )

    def pipe(self, products: Iterable[Product], batch_size: int = 256) -> Iterator[Product]:
        """Annotate a stream of products batch by batch, in constant memory."""
        for batch in batched(products, batch_size):
            self.annotate(batch, self.predict(batch))
            yield from batch

    def save(self, path: Path) -> None:
        """Save into folder `path`: the model files plus meta.json (kind, format version, params, train info)."""
        from shangpin.storage.artifacts import package_versions

        self.check_fitted()
        path.mkdir(parents=True, exist_ok=True)
        self._save_state(path)
        meta = {
            "kind": self.name,
            "task": self.task,
            "version": self.version,
            "params": _jsonable(self.get_params()),
            "packages": package_versions(),
            "train": _jsonable(getattr(self, "train_info_", {})),
        }
        with atomic_write(path / META_FILE) as fh:
            json.dump(meta, fh, indent=2, ensure_ascii=False)

    @classmethod
    def read_meta(cls, path: Path) -> dict[str, Any]:
        """Read meta.json of a saved stage, checking its kind and format version."""
        meta_path = path / META_FILE
        if not meta_path.is_file():
            raise NotFittedError(
                f"expected a saved stage with {META_FILE} in {path}, found none; train one with "
                f"'shangpin train --task {cls.task}'",
                stage=cls.name,
            )
        meta: dict[str, Any] = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("version") != cls.version:
            raise IncompatibleModelError(
                f"{path} was saved by format v{meta.get('version')}, this code reads v{cls.version}; "
                f"retrain with 'shangpin train --task {cls.task}'",
                stage=cls.name,
            )
        return meta

    @classmethod
    def load(cls, path: Path) -> Self:
        """Load a stage saved by `save`."""
        meta = cls.read_meta(path)
        unknown = sorted(set(meta["params"]) - set(cls._param_names()))
        if unknown:
            raise IncompatibleModelError(
                f"{path} was saved with parameters this version of shangpin does not know "
                f"({', '.join(unknown)}): it comes from a newer or patched version; load it with that version "
                f"or retrain with 'shangpin train --task {cls.task}'",
                stage=cls.name,
            )
        stage = cls(**{**cls.legacy_params, **meta["params"]})
        stage._load_state(path)
        stage.train_info_ = meta.get("train", {})
        return stage


def dev_split(
    items: Sequence[T], fraction: float, rng: random.Random, minimum: int = 20
) -> tuple[list[T], list[T]]:
    """(dev, train), each in input order: `fraction` of `items` drawn with `rng` for dev; no dev under `minimum`."""
    order = list(range(len(items)))
    rng.shuffle(order)
    n_dev = int(round(fraction * len(items))) if len(items) >= minimum else 0
    return [items[i] for i in sorted(order[:n_dev])], [items[i] for i in sorted(order[n_dev:])]


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return repr(value)
