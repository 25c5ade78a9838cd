"""Progress bars for long work: rich on a terminal, silent otherwise (logs and CI stay clean)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def enabled() -> bool:
    """Bars show on an interactive stderr, or when SHANGPIN_PROGRESS=1; SHANGPIN_PROGRESS=0 hides them."""
    env = os.environ.get("SHANGPIN_PROGRESS")
    if env is not None:
        return env == "1"
    return sys.stderr.isatty()


def track(items: Iterable[T], description: str, total: float | None = None) -> Iterator[T]:
    """Iterate with a progress bar (rich) when enabled."""
    if not enabled():
        yield from items
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, transient=True) as bar:
        yield from bar.track(items, total=total, description=description)
