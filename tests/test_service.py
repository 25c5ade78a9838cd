"""The REST service (issue 7): routes, auth and scopes, limits, review queue and audit, metrics, errors."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from shangpin.cli import app as cli
from shangpin.errors import ConfigError
from shangpin.pipeline import Pipeline
from shangpin.records import Product
from shangpin.service import ServiceSettings, create_app
from shangpin.service.batching import MicroBatcher
from shangpin.storage.catalog import product_to_input
from shangpin.storage.keys import KeyStore
from shangpin.storage.review import ReviewStore, Thresholds
from tests.factories import tiny_products, write_products

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def model(service_model: Path) -> Path:
    return service_model


def _client(model: Path, url: str, **settings: object) -> TestClient:
    return TestClient(create_app(ServiceSettings(model_dir=model, db_url=url, **settings)))  # type: ignore[arg-type]


def _key(url: str, scope: str) -> dict[str, str]:
    with KeyStore(url) as store:
        _key, token = store.create(scope, name=f"test {scope}")
    return {"Authorization": f"Bearer {token}"}


def _body(n: int = 3, **extra: object) -> dict[str, object]:
    products = [product_to_input(p) for p in tiny_products(n, seed=7)]
    for p in products:
        p.pop("attributes", None)
        p.pop("category", None)
        p.pop("tags", None)
    return {"products": products, **extra}


def test_enrich_runs_every_stage_in_input_order(model: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    with _client(model, url) as client:
        assert client.get("/healthz").json()["status"] == "ok"
        assert client.post("/v1/enrich", json=_body()).status_code == 401
        read = _key(url, "read")
        body = _body(5)
        answer = client.post("/v1/enrich", json=body, headers=read)
        assert answer.status_code == 200, answer.text
        results = answer.json()["results"]
        assert [r["id"] for r in results] == [p["id"] for p in body["products"]]  # type: ignore[index]
        assert all("category" in r and "tags" in r for r in results)
        spans = [(r, v) for r in results for v in r.get("attributes", {}).values()]
        assert spans, "the tiny extractor finds values in its own kind of titles"
        for r, v in spans:
            title = next(p["title"] for p in body["products"] if p["id"] == r["id"])  # type: ignore[attr-defined]
            assert title[v["start"] : v["end"]] == v["value"]
        only = client.post("/v1/extract", json=body, headers=read).json()["results"]
        assert all("category" not in r and "tags" not in r for r in only)
        assert set(client.post("/v1/categorize", json=body, headers=read).json()["results"][0]) >= {
            "id",
            "category",
        }
        assert "tags" in client.post("/v1/tags", json=body, headers=read).json()["results"][0]


def test_keys_scopes_and_revocation(model: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    runner = CliRunner()
    made = runner.invoke(cli, ["keys", "create", "--scope", "write", "--name", "ops", "--db", url])
    assert made.exit_code == 0, made.output
    token = made.stdout.strip().splitlines()[-1]
    assert token.startswith("sp_")
    with KeyStore(url) as store:
        (key,) = store.list()
        assert key.scope == "write" and token not in json.dumps(key.__repr__())
    with _client(model, url) as client:
        write = {"Authorization": f"Bearer {token}"}
        read = _key(url, "read")
        assert client.post("/v1/enrich", json=_body(store=True), headers=read).status_code == 403
        assert client.post("/v1/enrich", json=_body(store=True), headers=write).status_code == 200
        assert (
            client.post(
                "/v1/events", json={"events": [{"session_id": "s", "action": "view"}]}, headers=read
            ).status_code
            == 403
        )
        bad = {"Authorization": "Bearer sp_nothere_xxxx"}
        assert client.get("/v1/suggestions", headers=bad).status_code == 401
    listed = runner.invoke(cli, ["keys", "list", "--db", url])
    assert key.prefix in listed.stdout and "write" in listed.stdout
    assert runner.invoke(cli, ["keys", "revoke", key.prefix, "--db", url]).exit_code == 0
    with KeyStore(url) as store:
        assert store.verify(token) is None
    wrong = runner.invoke(cli, ["keys", "create", "--scope", "root", "--db", url])
    assert isinstance(wrong.exception, ConfigError) and "read, write, admin" in str(wrong.exception)


def test_review_queue_decisions_audit_and_undo(model: Path, db_url: str) -> None:
    with _client(model, db_url, thresholds=Thresholds(default=1.01)) as client:
        write = _key(db_url, "write")
        assert client.post("/v1/enrich", json=_body(4, store=True), headers=write).status_code == 200
        page = client.get("/v1/suggestions", params={"status": "pending", "limit": 500}, headers=write).json()
        assert page["total"] == len(page["items"]) > 3
        scores = [s["score"] for s in page["items"]]
        assert scores == sorted(scores)  # least confident first
        first, second, third = page["items"][:3]
        accepted = client.post(f"/v1/suggestions/{first['id']}/accept", headers=write).json()
        assert accepted["status"] == "accepted" and accepted["final_value"] in (
            first["value"],
            first["canonical"],
        )
        edited = client.post(
            f"/v1/suggestions/{second['id']}/edit", json={"value": "Corrected", "note": "typo"}, headers=write
        ).json()
        assert edited["status"] == "edited" and edited["final_value"] == "Corrected"
        assert client.post(f"/v1/suggestions/{second['id']}/edit", json={}, headers=write).status_code == 422
        assert (
            client.post(f"/v1/suggestions/{third['id']}/reject", headers=write).json()["status"] == "rejected"
        )
        assert client.post("/v1/suggestions/999999/accept", headers=write).status_code == 404
        trail = client.get("/v1/audit", params={"suggestion_id": second["id"]}, headers=write).json()
        (record,) = trail
        assert record["action"] == "edit" and record["actor"].startswith("key:")
        assert record["before"] == {"status": "pending", "value": None}
        assert record["after"] == {"status": "edited", "value": "Corrected", "note": "typo"}
        assert record["model_version"] == second["model_version"] and record["at"]
        undone = client.post("/v1/suggestions/undo", headers=write).json()
        assert undone["id"] == third["id"] and undone["status"] == "pending"
        assert client.post("/v1/suggestions/undo", headers=write).json()["id"] == second["id"]
        bulk = client.post("/v1/suggestions/bulk-accept", json={"min_score": 0.0}, headers=write).json()
        assert bulk["accepted"] == page["total"] - 1  # all but the accepted one
        assert client.get("/v1/suggestions", headers=write).json()["total"] == 0
        # A new prediction for the same product supersedes the old pending ones.
        client.post("/v1/enrich", json=_body(4, store=True), headers=write)
        with ReviewStore(db_url) as store:
            assert store.queue_depth() == page["total"]
        metrics = client.get("/metrics", headers=write).text
        assert f"shangpin_review_queue_depth {float(page['total'])}" in metrics


def test_auto_accept_and_reviewed_products(model: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    products = [Product(p["id"], p["title"]) for p in _body(6)["products"]]  # type: ignore[index]
    pipeline = Pipeline.load(model)
    out = list(pipeline.pipe(products))
    with ReviewStore(url) as store:
        n = store.save_products(
            out,
            model_version="m@1",
            include_category=True,
            include_tags=True,
            thresholds=Thresholds(default=0.0),
        )
        assert n > 0 and store.queue_depth() == 0
        auto, total = store.suggestions(status="auto_accepted", limit=1000)
        assert total == n and all(s.reviewed_by == "system" for s in auto)
        assert all(a["action"] == "auto_accept" for a in store.audit(limit=1000))
        assert store.reviewed_products("extract_attributes") == []  # auto-accepted is never gold
        category = next(s for s in auto if s.stage == "categorize")
        store.decide(category.id, "edit", actor="me", value="Shoes > Boots")
        (gold,) = store.reviewed_products("categorize")
        assert gold.product_id == category.product_id and gold.category_path == "Shoes > Boots"


def test_bad_requests_get_4xx_naming_the_field(model: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    with _client(model, url, max_body_bytes=20_000, max_products=4) as client:
        read = _key(url, "read")
        missing = client.post("/v1/enrich", json={"products": [{"title": "x"}]}, headers=read)
        assert missing.status_code == 422 and "products.0.id" in missing.json()["message"]
        broken = client.post(
            "/v1/enrich", content=b'{"products": [', headers={**read, "content-type": "application/json"}
        )
        assert broken.status_code == 422
        empty = client.post("/v1/enrich", json={"products": [{"id": "a", "title": ""}]}, headers=read)
        assert empty.status_code in (200, 422)
        assert client.post("/v1/enrich", json={"products": []}, headers=read).status_code == 422
        assert client.post("/v1/enrich", json=_body(5), headers=read).status_code == 413
        huge = {"products": [{"id": "a", "title": "x" * 30_000}]}
        too_big = client.post("/v1/enrich", json=huge, headers=read)
        assert too_big.status_code == 413 and "limit" in too_big.json()["detail"]
        rank = client.post("/v1/rank", json={"id": "r", "candidates": [], "session_events": []}, headers=read)
        assert rank.status_code == 422


def test_rate_limit_answers_429(model: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    with _client(model, url, rate_limit=1.0) as client:
        read = _key(url, "read")
        codes = [client.get("/v1/suggestions", headers=read).status_code for _ in range(4)]
        assert codes[:2] == [200, 200] and codes[-1] == 429
        limited = client.get("/v1/suggestions", headers=read)
        assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1


def test_rank_importance_events_and_metrics(
    model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHANGPIN_SALT", "test-salt")
    url = f"sqlite:///{tmp_path / 's.db'}"
    catalog = [json.loads(line) for line in (ROOT / "demo" / "rank_catalog.jsonl").open()][:30]
    shoes = [p for p in catalog if p["category"] == catalog[0]["category"]]
    with _client(model, url) as client:
        write = _key(url, "write")
        request = {
            "id": "r1",
            "category": shoes[0]["category"],
            "session_events": [{"action": "click", "product_id": shoes[0]["id"]}],
            "candidates": [p["id"] for p in shoes],
        }
        ranked = client.post("/v1/rank", json=request, headers=write).json()
        assert sorted(ranked["ranking"]) == sorted(request["candidates"])  # type: ignore[arg-type]
        assert set(ranked["explanations"]) == set(ranked["ranking"])
        category = shoes[0]["category"]
        weights = client.get(f"/v1/importance/{category}", headers=write).json()
        assert abs(sum(weights["weights"].values()) - 1) < 1e-3 and weights["facets"]
        top = category.split(" > ")[0]
        assert client.get(f"/v1/importance/{top}", headers=write).status_code == 200
        assert client.get("/v1/importance/Nowhere", headers=write).status_code == 422
        events = [
            {"session_id": "s1", "user_id": "alice", "timestamp": 1.0, "action": "click", "product_id": "p"},
            {"session_id": "s1", "action": "teleport"},
        ]
        stored = client.post("/v1/events", json={"events": events}, headers=write).json()
        assert stored["accepted"] == 1 and stored["rejected"][0]["index"] == 1
        assert "events[1]" in stored["rejected"][0]["reason"]
        metrics = client.get("/metrics", headers=write).text
        assert 'shangpin_http_requests_total{method="POST",route="/v1/rank",status="200"} 1.0' in metrics
        assert (
            "shangpin_model_info{version=" in metrics
            and "shangpin_model_batch_size_count"
            not in metrics.split("shangpin_model_batch_size_count 0.0")[0][-1:]
        )


def test_auth_off_is_logged_and_lets_everyone_in(
    model: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    with caplog.at_level("WARNING", logger="shangpin.service"), _client(model, url, auth=False) as client:
        assert client.post("/v1/enrich", json=_body(1, store=True)).status_code == 200
    assert "authentication is OFF" in caplog.text


def test_micro_batching_shares_model_calls() -> None:
    sizes: list[int] = []

    def run(products: list[Product], stages: tuple[str, ...] | None) -> list[Product]:
        sizes.append(len(products))
        time.sleep(0.05)
        if any(p.title == "boom" for p in products):
            raise ValueError("bad product")
        return [Product(p.product_id, p.title.upper()) for p in products]

    async def main() -> list[object]:
        batcher = MicroBatcher(run, max_batch=8)
        jobs = [
            batcher.submit([Product(f"{i}-{j}", "boom" if i == 5 else f"t{i}") for j in range(2)])
            for i in range(10)
        ]
        try:
            return await asyncio.gather(*jobs, return_exceptions=True)
        finally:
            await batcher.close()

    results = asyncio.run(main())
    assert isinstance(results[5], ValueError)
    for i, r in enumerate(results):
        if i != 5:
            assert [p.title for p in r] == [f"T{i}", f"T{i}"]  # type: ignore[union-attr]
    assert max(sizes) <= 8 and sizes[0] == 8  # queued requests share calls, up to max_batch products


class _Proxy:
    """A TCP proxy to PostgreSQL that the test can cut and restore: an outage the service must survive."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self._conns: list[socket.socket] = []
        self._server: socket.socket | None = None

    def start(self) -> None:
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen(16)
        self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            try:
                self._server.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
            except OSError:
                pass
            self._server.close()
            self._server = None
        for conn in self._conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()
        self._conns.clear()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


@pytest.mark.postgres
def test_database_outage_gives_503_then_recovers(model: Path, db_url: str) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("the outage is simulated on the PostgreSQL connection")
    from sqlalchemy.engine import make_url

    url = make_url(db_url)
    proxy = _Proxy((url.host or "127.0.0.1", url.port or 5432))
    proxy.start()
    through = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    try:
        with _client(model, through) as client:
            write = _key(through, "write")
            assert client.get("/v1/suggestions", headers=write).status_code == 200
            proxy.stop()
            down = client.get("/v1/suggestions", headers=write)
            assert down.status_code == 503 and down.headers["Retry-After"]
            assert client.get("/healthz").json()["database"] == "unavailable"
            proxy.start()
            assert client.get("/v1/suggestions", headers=write).status_code == 200
            assert client.get("/healthz").json()["database"] == "ok"
    finally:
        proxy.stop()


def test_train_from_reviews_uses_human_decisions_only(model: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    products = tiny_products(40)
    data = tmp_path / "train.jsonl"
    write_products(data, products)
    unlabelled = [Product(p.product_id, p.title, p.description) for p in products[:6]]
    out = list(Pipeline.load(model, stages=["categorize"]).pipe(unlabelled))
    with ReviewStore(url) as store:
        store.save_products(
            out, model_version="m@1", include_category=True, thresholds=Thresholds(default=1.01)
        )
        pending, _ = store.suggestions(limit=10)
        store.decide(pending[0].id, "edit", actor="me", value="Shoes > Clogs")
        store.decide(pending[1].id, "accept", actor="me")
        store.decide(pending[2].id, "reject", actor="me")
    runner = CliRunner()
    new_model = tmp_path / "retrained"
    args = ["train", "--task", "categorize", "--from-reviews", "--db", url, "--model", str(new_model)]
    result = runner.invoke(cli, [*args, "--data", str(data)])
    assert result.exit_code == 0, result.output
    meta = json.loads((new_model / "categorize" / "meta.json").read_text())
    assert meta["train"]["reviewed_products"] == 2  # the edit and the accept; a rejected category is no label
    retrained = Pipeline.load(new_model).get("categorize")
    assert "Shoes > Clogs" in retrained.classes_  # type: ignore[attr-defined]  # the correction is a new class
    empty = runner.invoke(
        cli, ["train", "--task", "tags", "--from-reviews", "--db", url, "--model", str(new_model)]
    )
    assert "no human decisions on 'recommend_tags'" in str(empty.exception)
