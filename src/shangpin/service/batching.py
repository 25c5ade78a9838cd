"""Micro-batching: products of concurrent requests share one model call.

Requests queue up while the model runs; the next call takes everything queued (up to `max_batch` products per
stage selection), so one request alone pays no waiting time and many concurrent ones share the per-batch cost.
The model runs on one worker thread: stages need not be thread-safe, and the event loop stays free.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from shangpin.records import Product

log = logging.getLogger(__name__)

Stages = tuple[str, ...] | None
RunFn = Callable[[list[Product], Stages], list[Product]]


@dataclass
class _Job:
    products: list[Product]
    stages: Stages
    future: asyncio.Future[list[Product]] = field(repr=False)


class MicroBatcher:
    """Collects concurrent `submit` calls into model batches of at most `max_batch` products.

    Args:
        run: the model call: products and the stages to run (None: all) -> the same products, enriched.
        max_batch: products per model call.
        on_batch: called with each model batch's size (metrics).
    """

    def __init__(
        self, run: RunFn, *, max_batch: int = 256, on_batch: Callable[[int], None] | None = None
    ) -> None:
        self._run = run
        self.max_batch = max_batch
        self._on_batch = on_batch
        self._queue: asyncio.Queue[_Job] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shangpin-model")

    async def submit(self, products: list[Product], stages: Stages = None) -> list[Product]:
        """Enrich `products` (with `stages`, or all) in a shared batch; raises what the model raised for them."""
        if self._worker is None or self._worker.done():
            self._queue = asyncio.Queue()
            self._worker = asyncio.get_running_loop().create_task(self._loop())
        assert self._queue is not None
        future: asyncio.Future[list[Product]] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Job(products, stages, future))
        return await future

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _loop(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await self._queue.get()]
            while not self._queue.empty():
                jobs.append(self._queue.get_nowait())
            groups: dict[Stages, list[_Job]] = {}
            for job in jobs:
                groups.setdefault(job.stages, []).append(job)
            for stages, group in groups.items():
                for batch in _batches(group, self.max_batch):
                    await self._run_batch(loop, stages, batch)

    async def _run_batch(self, loop: asyncio.AbstractEventLoop, stages: Stages, jobs: Sequence[_Job]) -> None:
        products = [p for job in jobs for p in job.products]
        if self._on_batch is not None:
            self._on_batch(len(products))
        try:
            out = await loop.run_in_executor(self._executor, self._run, products, stages)
        except Exception as exc:
            if len(jobs) == 1:
                _settle(jobs[0], exc=exc)
                return
            # One request's products broke the shared batch: run each request alone so only it fails.
            log.warning(
                "a shared model batch failed (%s); running its %d requests one by one", exc, len(jobs)
            )
            for job in jobs:
                await self._run_batch(loop, stages, [job])
            return
        start = 0
        for job in jobs:
            _settle(job, result=out[start : start + len(job.products)])
            start += len(job.products)


def _batches(jobs: list[_Job], max_batch: int) -> list[list[_Job]]:
    """Whole requests packed into batches of at most `max_batch` products (a bigger request goes alone)."""
    batches: list[list[_Job]] = []
    current: list[_Job] = []
    size = 0
    for job in jobs:
        if current and size + len(job.products) > max_batch:
            batches.append(current)
            current, size = [], 0
        current.append(job)
        size += len(job.products)
    if current:
        batches.append(current)
    return batches


def _settle(job: _Job, *, result: list[Product] | None = None, exc: BaseException | None = None) -> None:
    if job.future.done():  # the client went away
        return
    if exc is not None:
        job.future.set_exception(exc)
    else:
        assert result is not None
        job.future.set_result(result)
