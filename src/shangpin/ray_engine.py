"""The Ray Data engine of `predict`: chunks of products enriched by a pool of actors, each loading the model once.

The products are read by our own streaming reader (`read_products`, the same validation, field mapping and
skip rules as the local engine) inside one Ray Data read task, which emits one block per chunk still to do;
`map_batches` hands each chunk to an actor of a fixed pool (`concurrency=workers`), which runs the pipeline
over it with the same batch size as the local engine and returns the chunk's output lines. A last block
carries the read report (and the data error that stopped the reader, if any). The driver receives chunks in
any order; the resumable job (`jobs.py`) puts them back in input order.

Ray is imported only here, so the rest of the package runs without it.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import pickle
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shangpin._util import batched
from shangpin.errors import ConfigError, DataError, ShangpinError
from shangpin.predict import ChunkResult, output_lines
from shangpin.storage.catalog import ReadReport, read_products

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger(__name__)

SUMMARY_CHUNK = -1
"""Chunk number of the last block: the read report, no products."""
ERROR_CHUNK = -2
"""Chunk number of an actor's answer that is a user-fixable error (Ray would pass on only its text)."""
WORKER_ENV = {"SHANGPIN_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
"""One inference thread per actor: the pool, not the thread pools of each actor, uses the cores."""

# Ray guesses the actors' inputs from the read's block count (1: one read task), before the task yields a
# block per chunk; the pool does get every chunk.
warnings.filterwarnings(
    "ignore", message=r"The minimum number of concurrent actors for 'MapBatches\(_Annotator\)'"
)


def ray_chunks(
    model_dir: Path,
    data: Path,
    *,
    batch_size: int,
    chunk_size: int,
    skip_invalid: bool,
    field_map: Mapping[str, str] | None,
    done: Iterable[int],
    workers: int | None,
    with_products: bool,
    report: ReadReport,
) -> Iterator[ChunkResult]:
    """Enrich the chunks of `data` not in `done` with `workers` Ray actors, yielding them as they finish.

    Fills `report` when the input has been read; raises the reader's DataError after the chunks before the
    bad line. Starts a local Ray instance (`workers` + 1 CPUs: the actors and the reader) unless Ray is
    already initialised in this process or RAY_ADDRESS names a cluster, and shuts down only what it started.
    """
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise ConfigError(
            f"--engine ray needs Ray Data, which is not installed ({exc}); run: pip install 'shangpin[ray]'"
        ) from exc
    from shangpin._progress import enabled as progress_enabled

    workers = workers or _cores()
    quiet = not log.isEnabledFor(logging.INFO)
    ray_data_log = logging.getLogger("ray.data")
    saved_level = ray_data_log.level
    if quiet:
        ray_data_log.setLevel(logging.ERROR)  # progress-bar and deprecation notices
    started = _init_ray(workers, quiet=quiet)
    context = ray.data.DataContext.get_current()
    saved = context.enable_progress_bars, context.target_max_block_size
    # Ray Data merges the small blocks a read task yields into blocks of up to 128 MiB, which would hand
    # every chunk to one actor; at 1 byte each block holds one row, that is one chunk.
    context.enable_progress_bars, context.target_max_block_size = progress_enabled(), 1
    try:
        source = _ChunkSource(
            data.resolve(),
            chunk_size=chunk_size,
            skip_invalid=skip_invalid,
            field_map=dict(field_map) if field_map else None,
            done=frozenset(done),
        )
        dataset = ray.data.read_datasource(source, override_num_blocks=1).map_batches(
            _Annotator,
            fn_constructor_kwargs={
                "model_dir": str(model_dir.resolve()),
                "batch_size": batch_size,
                "with_products": with_products,
            },
            batch_size=1,  # one chunk per call
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=1,
            runtime_env={"env_vars": WORKER_ENV},
        )
        error = None
        for row in dataset.iter_rows():
            if row["chunk"] == SUMMARY_CHUNK:
                error = _fill_report(report, json.loads(row["summary"]), str(data.resolve()), str(data))
            elif row["chunk"] == ERROR_CHUNK:
                raise _error(json.loads(row["summary"]))
            else:
                products = pickle.loads(row["products"]) if with_products else None
                yield ChunkResult(int(row["chunk"]), row["lines"], products)
        if error is not None:
            raise DataError(error)
    finally:
        context.enable_progress_bars, context.target_max_block_size = saved
        ray_data_log.setLevel(saved_level)
        if started:
            ray.shutdown()


def _cores() -> int:
    """The cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _init_ray(workers: int, *, quiet: bool) -> bool:
    """Initialise Ray unless it is; True when this call started it. `quiet`: log errors only."""
    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # offline machines: no usage report attempts
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=False, logging_level=logging.ERROR if quiet else logging.INFO)
    else:
        # address="local": a new instance of our own, not whatever `ray start` left running on the machine.
        ray.init(
            address="local",
            num_cpus=workers + 1,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.ERROR if quiet else logging.INFO,
        )
    return True


def _error(info: dict[str, str]) -> ShangpinError:
    """The ShangpinError an actor reported, as its own class."""
    import shangpin.errors

    cls = getattr(shangpin.errors, info["class"], None)
    if not (isinstance(cls, type) and issubclass(cls, ShangpinError)):
        cls = ShangpinError
    return cls(info["message"])


def _fill_report(report: ReadReport, summary: dict[str, Any], read_as: str, shown_as: str) -> str | None:
    """Add the reader's summary to `report`; returns the error that stopped it. Messages name the input
    file as the caller spelled it (the reader had the absolute path: actors may run in another folder)."""

    def shown(message: str) -> str:
        return shown_as + message.removeprefix(read_as) if message.startswith(read_as + ":") else message

    report.read += summary["read"]
    report.skipped.update(Counter(summary["skipped"]))
    report.examples.extend(shown(m) for m in summary["examples"][: max(0, 5 - len(report.examples))])
    report.truncated += summary["truncated"]
    return None if summary["error"] is None else shown(summary["error"])


try:
    from ray.data import Datasource as _Datasource
except ImportError:  # pragma: no cover - the module is imported only for --engine ray
    _Datasource = object  # type: ignore[assignment,misc]


class _ChunkSource(_Datasource):
    """A Ray Data source of one read task streaming the product file as one block per chunk to do."""

    def __init__(
        self,
        data: Path,
        *,
        chunk_size: int,
        skip_invalid: bool,
        field_map: dict[str, str] | None,
        done: frozenset[int],
    ) -> None:
        self.read_args: dict[str, Any] = {
            "data": data,
            "chunk_size": chunk_size,
            "skip_invalid": skip_invalid,
            "field_map": field_map,
            "done": done,
        }

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    @property
    def supports_distributed_reads(self) -> bool:
        return False  # the file is on the driver's machine

    def get_read_tasks(self, parallelism: int, *args: Any, **kwargs: Any) -> list[Any]:
        from ray.data import ReadTask
        from ray.data.block import BlockMetadata

        meta = BlockMetadata(
            num_rows=None, size_bytes=None, exec_stats=None, input_files=(str(self.read_args["data"]),)
        )
        # One task: chunk numbers count products, so only a reader of the whole file knows where each starts.
        return [ReadTask(functools.partial(_read_chunks, **self.read_args), meta)]


def _read_chunks(
    *,
    data: Path,
    chunk_size: int,
    skip_invalid: bool,
    field_map: dict[str, str] | None,
    done: frozenset[int],
) -> Iterator[pa.Table]:
    report = ReadReport()
    error = None
    products = read_products(data, field_map=field_map, skip_invalid=skip_invalid, report=report)
    try:
        for index, chunk in enumerate(batched(products, chunk_size)):
            if index not in done:
                yield _block(index, products=pickle.dumps(chunk))
    except DataError as exc:
        error = exc.message
    summary = {
        "read": report.read,
        "skipped": dict(report.skipped),
        "examples": report.examples,
        "truncated": report.truncated,
        "error": error,
    }
    yield _block(SUMMARY_CHUNK, summary=json.dumps(summary))


def _block(index: int, *, products: bytes = b"", lines: str = "", summary: str = "") -> pa.Table:
    import pyarrow as pa

    return pa.table(
        {
            "chunk": pa.array([index], pa.int64()),
            "products": pa.array([products], pa.binary()),
            "lines": pa.array([lines], pa.large_string()),
            "summary": pa.array([summary], pa.string()),
        }
    )


class _Annotator:
    """A Ray actor: loads the pipeline once, then enriches one chunk per call.

    A ShangpinError (loading the model, or in a stage) comes back as an ERROR_CHUNK row, so the driver can
    raise it with its class and message; Ray's own exceptions keep only the text and a traceback.
    """

    def __init__(self, model_dir: str, batch_size: int, with_products: bool) -> None:
        from shangpin.pipeline import Pipeline

        self.error: ShangpinError | None = None
        try:
            self.pipeline = Pipeline.load(Path(model_dir))
        except ShangpinError as exc:
            self.error = exc
        self.batch_size = batch_size
        self.with_products = with_products

    def __call__(self, batch: pa.Table) -> pa.Table:
        import pyarrow as pa

        blocks = []
        for row in batch.to_pylist():
            if row["chunk"] == SUMMARY_CHUNK:
                blocks.append(_block(SUMMARY_CHUNK, summary=row["summary"]))
                continue
            try:
                if self.error is not None:
                    raise self.error
                products = pickle.loads(row["products"])
                enriched = list(self.pipeline.pipe(products, batch_size=self.batch_size))
            except ShangpinError as exc:
                info = {"class": type(exc).__name__, "message": exc.message}
                blocks.append(_block(ERROR_CHUNK, summary=json.dumps(info)))
                continue
            blocks.append(
                _block(
                    row["chunk"],
                    lines=output_lines(enriched, self.pipeline.assigns),
                    products=pickle.dumps(enriched) if self.with_products else b"",
                )
            )
        return pa.concat_tables(blocks)
