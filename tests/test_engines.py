"""Batch engines and resumable jobs (issue 7): the Ray engine writes the local engine's bytes, and a killed run
started again finishes with every product exactly once, in input order, in the file and in the database."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from shangpin.errors import ConfigError, DataError
from shangpin.jobs import KILL_AFTER_ENV, MANIFEST_FILE, ChunkedJob, parts_dir
from shangpin.predict import PredictReport, predict_file
from shangpin.storage.catalog import product_to_input
from shangpin.train import train
from tests.factories import tiny_products, write_products

HAS_RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(not HAS_RAY, reason="ray is not installed (pip install 'shangpin[ray]')")
N_PRODUCTS = 120
CHUNK = 16  # 8 chunks, two model batches each
BATCH = 8
EXTRACT = ["num_layers=1", "epochs=2", "batch_size=8"]  # a weak tagger is enough: its scores must match


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Categorisation (linear SVM) and extraction (int8 ONNX MiniLM), trained small to keep the module fast."""
    folder = tmp_path_factory.mktemp("engines")
    data = folder / "train.jsonl"
    write_products(data, tiny_products(40))
    model_dir = folder / "model"
    train("categorize", data, model_dir)
    train("extract", data, model_dir, overrides=EXTRACT)
    return model_dir


def _product_lines() -> str:
    """N_PRODUCTS products with two malformed lines (kept with --skip-invalid), one in the third chunk."""
    lines = [json.dumps(product_to_input(p)) + "\n" for p in tiny_products(N_PRODUCTS, seed=1)]
    lines.insert(5, '{"title": "no id"}\n')
    lines.insert(40, "not json\n")
    return "".join(lines)


@pytest.fixture()
def products(tmp_path: Path) -> Path:
    path = tmp_path / "products.jsonl"
    path.write_text(_product_lines())
    return path


@pytest.fixture(scope="module")
def reference(model: Path, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The local engine's output in one uninterrupted run."""
    folder = tmp_path_factory.mktemp("reference")
    (folder / "products.jsonl").write_text(_product_lines())
    _predict(model, folder / "products.jsonl", folder / "out.jsonl")
    return (folder / "out.jsonl").read_bytes()


class Killed(BaseException):
    """Stands in for a kill in in-process runs: no `except Exception` catches it, so the chunk folder stays."""


def _interrupted(monkeypatch: pytest.MonkeyPatch, before_chunk: int, *args: Path, **kwargs: object) -> None:
    """Run `_predict(*args, **kwargs)`, interrupted before chunk `before_chunk` is written (chunks in order)."""
    original = ChunkedJob.write_chunk

    def dies(self: ChunkedJob, index: int, lines: str) -> None:
        if index == before_chunk:
            raise Killed
        original(self, index, lines)

    with monkeypatch.context() as patch:
        patch.setattr(ChunkedJob, "write_chunk", dies)
        with pytest.raises(Killed):
            _predict(*args, **kwargs)


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    """One local Ray instance for the module (the engine reuses an initialised Ray instead of starting one)."""
    if not HAS_RAY:
        pytest.skip("ray is not installed (pip install 'shangpin[ray]')")
    import ray

    ray.init(address="local", num_cpus=3, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()


def _predict(model: Path, data: Path, out: Path, **kwargs: object) -> PredictReport:
    options: dict[str, object] = {"batch_size": BATCH, "chunk_size": CHUNK, "skip_invalid": True, **kwargs}
    return predict_file(model, data, out, **options)  # type: ignore[arg-type]


def _cli(
    model: Path, data: Path, out: Path, *extra: str, kill_after: int | None = None
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop(KILL_AFTER_ENV, None)
    if kill_after is not None:
        env[KILL_AFTER_ENV] = str(kill_after)
    cmd = [sys.executable, "-m", "shangpin", "predict", "--model", str(model), "--data", str(data)]
    cmd += [
        "--out",
        str(out),
        "--batch-size",
        str(BATCH),
        "--chunk-size",
        str(CHUNK),
        "--skip-invalid",
        *extra,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)


def _ids(path: Path) -> list[str]:
    return [json.loads(line)["id"] for line in path.read_text().splitlines()]


def _stored(url: str) -> list[tuple[str, str | None, str, float]]:
    """Every stored prediction (product, attribute, value, score), sorted."""
    from sqlalchemy import select

    from shangpin.storage.db import PredictionRow, init_db

    engine = init_db(url)
    try:
        with engine.connect() as conn:
            columns = (
                PredictionRow.product_id,
                PredictionRow.attribute,
                PredictionRow.value,
                PredictionRow.score,
            )
            return sorted((r[0], r[1], r[2], r[3]) for r in conn.execute(select(*columns)))
    finally:
        engine.dispose()


@needs_ray
def test_ray_engine_writes_the_local_bytes(
    model: Path, products: Path, tmp_path: Path, ray_cluster: None
) -> None:
    local = _predict(model, products, tmp_path / "local.jsonl", db_url=f"sqlite:///{tmp_path / 'l.db'}")
    ray = _predict(
        model,
        products,
        tmp_path / "ray.jsonl",
        engine="ray",
        workers=2,
        db_url=f"sqlite:///{tmp_path / 'r.db'}",
    )
    assert (tmp_path / "ray.jsonl").read_bytes() == (tmp_path / "local.jsonl").read_bytes()
    assert _ids(tmp_path / "local.jsonl") == [p.product_id for p in tiny_products(N_PRODUCTS, seed=1)]
    assert ray.read.summary() == local.read.summary()
    assert "skipped 2 invalid lines (1 missing 'id', 1 invalid JSON)" in ray.read.summary()
    assert ray.read.examples == local.read.examples and ray.written == local.written == N_PRODUCTS
    assert ray.stored == local.stored > 0
    assert _stored(f"sqlite:///{tmp_path / 'r.db'}") == _stored(f"sqlite:///{tmp_path / 'l.db'}")
    assert not parts_dir(tmp_path / "ray.jsonl").exists()


@needs_ray
def test_ray_engine_stops_at_a_bad_line_like_local(
    model: Path, products: Path, tmp_path: Path, ray_cluster: None
) -> None:
    messages = []
    for engine in ("local", "ray"):
        out = tmp_path / f"{engine}.jsonl"
        with pytest.raises(DataError) as info:
            predict_file(
                model,
                products,
                out,
                batch_size=BATCH,
                chunk_size=CHUNK,
                engine=engine,
                workers=None if engine == "local" else 1,
            )
        messages.append(info.value.message)
        assert not out.exists() and not parts_dir(out).exists()
    assert messages[0] == messages[1]
    assert messages[0].startswith(f"{products}:6: missing 'id'")


@needs_ray
def test_ray_actor_errors_keep_their_class(products: Path, tmp_path: Path, ray_cluster: None) -> None:
    from shangpin.errors import NotFittedError
    from shangpin.ray_engine import ray_chunks
    from shangpin.storage.catalog import ReadReport

    chunks = ray_chunks(
        tmp_path / "no-model",  # the driver checks the model first; here the actors meet the missing model
        products,
        batch_size=BATCH,
        chunk_size=CHUNK,
        skip_invalid=True,
        field_map=None,
        done=(),
        workers=1,
        with_products=False,
        report=ReadReport(),
    )
    with pytest.raises(NotFittedError, match="no-model"):
        list(chunks)


def test_resume_after_sigkill(model: Path, products: Path, tmp_path: Path) -> None:
    """The issue's check: kill -9 mid-run, run the same command again: every product once, in order."""
    url = f"sqlite:///{tmp_path / 'preds.db'}"
    out = tmp_path / "out.jsonl"
    killed = _cli(model, products, out, "--db", url, kill_after=3)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not out.exists()
    parts = parts_dir(out)
    assert sorted(p.name for p in parts.glob("chunk-*.jsonl")) == [f"chunk-00000{k}.jsonl" for k in range(3)]
    assert (parts / MANIFEST_FILE).is_file()

    resumed = _cli(model, products, out, "--db", url)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed: 3 chunks were written by an earlier run" in resumed.stderr
    assert "read 120 products; skipped 2 invalid lines" in resumed.stderr
    assert not parts.exists()

    ref_url = f"sqlite:///{tmp_path / 'ref.db'}"
    _predict(model, products, tmp_path / "ref.jsonl", db_url=ref_url)
    assert out.read_bytes() == (tmp_path / "ref.jsonl").read_bytes()
    assert _ids(out) == [p.product_id for p in tiny_products(N_PRODUCTS, seed=1)]
    assert _stored(url) == _stored(ref_url)  # no chunk stored twice, none lost


def test_resume_replaces_rows_of_a_chunk_stored_but_not_written(
    model: Path, products: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reference: bytes
) -> None:
    """Killed between storing a chunk's predictions and writing its output: the rerun stores it once."""
    url = f"sqlite:///{tmp_path / 'preds.db'}"
    out = tmp_path / "out.jsonl"
    _interrupted(monkeypatch, 2, model, products, out, db_url=url)
    report = _predict(model, products, out, db_url=url)
    assert report.resumed == 2 and out.read_bytes() == reference
    ref_url = f"sqlite:///{tmp_path / 'ref.db'}"
    _predict(model, products, tmp_path / "ref.jsonl", db_url=ref_url)
    assert _stored(url) == _stored(ref_url)


@needs_ray
def test_ray_engine_resumes_an_interrupted_local_run(
    model: Path,
    products: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    reference: bytes,
    ray_cluster: None,
) -> None:
    out = tmp_path / "out.jsonl"
    _interrupted(monkeypatch, 3, model, products, out)
    report = _predict(model, products, out, engine="ray", workers=2)
    assert report.resumed == 3 and report.written == N_PRODUCTS
    assert out.read_bytes() == reference


def test_changed_input_or_restart_discards_old_chunks(
    model: Path, products: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out.jsonl"
    _interrupted(monkeypatch, 2, model, products, out)
    assert _predict(model, products, out, restart=True).resumed == 0

    _interrupted(monkeypatch, 2, model, products, out)
    lines = products.read_text().splitlines(keepends=True)
    products.write_text("".join(lines[:30]))  # the same first chunks, but another file
    report = _predict(model, products, out)
    assert report.resumed == 0 and report.written == 29

    _interrupted(monkeypatch, 1, model, products, out)
    assert _predict(model, products, out, batch_size=4).resumed == 0  # another batch size


def test_foreign_parts_folder_is_left_alone(model: Path, products: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    parts_dir(out).mkdir()
    (parts_dir(out) / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not the chunk folder of a shangpin run"):
        _predict(model, products, out)
    assert (parts_dir(out) / "notes.txt").read_text() == "mine"


def test_workers_need_the_ray_engine(model: Path, products: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--engine ray"):
        _predict(model, products, tmp_path / "o.jsonl", workers=2)
    with pytest.raises(ConfigError, match="unknown engine 'spark'"):
        _predict(model, products, tmp_path / "o.jsonl", engine="spark")
