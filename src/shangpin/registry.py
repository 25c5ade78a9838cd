"""The only list of pipeline stages: stage kind -> lazy loader, plus the `--task` words that name them."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from shangpin.errors import ConfigError

if TYPE_CHECKING:
    from shangpin.stages.base import Stage


def _categorize() -> type[Stage[Any]]:
    from shangpin.stages.categorize import Categorizer

    return Categorizer


def _extract_attributes() -> type[Stage[Any]]:
    from shangpin.stages.extract_attributes import AttributeExtractor

    return AttributeExtractor


def _predict_attributes() -> type[Stage[Any]]:
    from shangpin.stages.predict_attributes import AttributePredictor

    return AttributePredictor


def _recommend_tags() -> type[Stage[Any]]:
    from shangpin.stages.recommend_tags import TagRecommender

    return TagRecommender


# Alphabetical; the pipeline order is STAGE_ORDER below.
_STAGES: dict[str, Callable[[], type[Stage[Any]]]] = {
    "categorize": _categorize,
    "extract_attributes": _extract_attributes,
    "predict_attributes": _predict_attributes,
    "recommend_tags": _recommend_tags,
}

# Order in which stages run when several are in one model (earlier stages feed later ones).
STAGE_ORDER: tuple[str, ...] = ("categorize", "extract_attributes", "predict_attributes", "recommend_tags")

# `shangpin train --task WORD` -> stage kind.
TASKS: dict[str, str] = {
    "categorize": "categorize",
    "extract": "extract_attributes",
    "attributes": "predict_attributes",
    "tags": "recommend_tags",
}


def available_stages() -> list[str]:
    """Registered stage kinds, sorted."""
    return sorted(_STAGES)


def get_stage_class(kind: str) -> type[Stage[Any]]:
    """The Stage class registered under `kind`; lists the valid kinds when it is unknown."""
    if kind not in _STAGES:
        raise ConfigError(f"unknown stage '{kind}'. Available: {', '.join(available_stages())}")
    return _STAGES[kind]()


def stage_for_task(task: str) -> str:
    """The stage kind trained by `--task task` (a stage kind itself is accepted too)."""
    if task in TASKS:
        return TASKS[task]
    if task in _STAGES:
        return task
    raise ConfigError(f"unknown task '{task}'. Available: {', '.join(sorted(TASKS))}")


def stage_rank(kind: str) -> int:
    """Position of a stage kind in the run order (unknown kinds run last, alphabetically)."""
    return STAGE_ORDER.index(kind) if kind in STAGE_ORDER else len(STAGE_ORDER)
