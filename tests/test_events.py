"""Behaviour events (issue 6): reading logs (contract, CSV, OpenSearch UBI), hashed storage, forget, retention."""

from __future__ import annotations

import gzip
import hashlib
import hmac
import json
import logging
import os
import stat
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import create_engine, text
from typer.testing import CliRunner

from shangpin.cli import app
from shangpin.errors import ConfigError, DataError
from shangpin.records import Event
from shangpin.storage.catalog import ReadReport
from shangpin.storage.events import (
    SALT_ENV,
    EventStore,
    event_from_dict,
    event_to_dict,
    hash_user,
    ingest_files,
    load_salt,
    read_events,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

SALT = b"test-salt-0123456789abcdef"
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC).timestamp()
runner = CliRunner()


def _jsonl(path: Path, rows: list[dict[str, object] | str]) -> Path:
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8"
    )
    return path


def _session() -> list[dict[str, object]]:
    """Alice searches, clicks the second result and buys it; an anonymous visitor views a product."""
    return [
        {
            "session_id": "s1",
            "user_id": "alice",
            "timestamp": T0,
            "action": "search",
            "query": "red shoes",
            "results": ["p1", "p2", "p3"],
            "category": "Apparel > Shoes",
        },
        {
            "session_id": "s1",
            "user_id": "alice",
            "timestamp": T0 + 5,
            "action": "click",
            "product_id": "p2",
            "position": 2,
        },
        {
            "session_id": "s1",
            "user_id": "alice",
            "timestamp": T0 + 9,
            "action": "add_to_cart",
            "product_id": "p2",
        },
        {
            "session_id": "s1",
            "user_id": "alice",
            "timestamp": T0 + 30,
            "action": "purchase",
            "product_id": "p2",
        },
        {
            "session_id": "s0",
            "timestamp": T0 + 1,
            "action": "view",
            "product_id": "p9",
            "category": "Home > Mugs",
        },
    ]


# --------------------------------------------------------------------------------------------- reading


def test_jsonl_events_in_the_contract(tmp_path: Path) -> None:
    events = list(read_events(_jsonl(tmp_path / "e.jsonl", [*_session()])))
    assert [e.action for e in events] == ["search", "click", "add_to_cart", "purchase", "view"]
    search, click = events[0], events[1]
    assert search == Event(
        session_id="s1",
        action="search",
        timestamp=T0,
        user_id="alice",
        category="Apparel > Shoes",
        query="red shoes",
        results=("p1", "p2", "p3"),
    )
    assert (click.product_id, click.position, click.timestamp) == ("p2", 2, T0 + 5)
    assert events[4].user_id is None and events[4].session_id == "s0"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2025-03-01T12:00:00Z", T0),
        ("2025-03-01T13:00:00+01:00", T0),
        ("2025-03-01T12:00:00", T0),  # no zone: UTC
        ("2025-03-01 12:00:00.250", T0 + 0.25),
        (int(T0), T0),
        (str(T0), T0),  # a CSV cell
        (int(T0 * 1000), T0),  # epoch milliseconds (JavaScript, OpenSearch)
    ],
)
def test_timestamps(value: object, expected: float) -> None:
    row = {"session_id": "s", "action": "view", "product_id": "p", "timestamp": value}
    assert event_from_dict(row, "t").timestamp == pytest.approx(expected)


def test_csv_events_with_results_as_json_or_pipes(tmp_path: Path) -> None:
    path = tmp_path / "e.csv"
    path.write_text(
        "session_id,user_id,timestamp,action,query,results,product_id,position,category\n"
        's1,u1,2025-03-01T12:00:00Z,search,mug,"[""p1"", ""p2""]",,,\n'
        "s1,u1,2025-03-01T12:00:05Z,search,cup,p3|p4 | p5,,,\n"
        "s1,u1,1740830410,click,,,p4,2,Home > Mugs\n",
        encoding="utf-8",
    )
    first, second, click = read_events(path)
    assert first.results == ("p1", "p2") and first.query == "mug" and first.timestamp == T0
    assert second.results == ("p3", "p4", "p5")
    assert (click.product_id, click.position, click.category, click.product_id) == (
        "p4",
        2,
        "Home > Mugs",
        "p4",
    )
    assert click.timestamp == T0 + 10


def test_gzip_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in _session())
    assert len(list(read_events(path))) == 5


def test_ubi_queries_and_events_mixed_with_the_contract(tmp_path: Path) -> None:
    rows: list[dict[str, object] | str] = [
        {
            "query_id": "q1",
            "client_id": "browser-7",
            "user_query": "red shoes",
            "timestamp": "2025-03-01T12:00:00Z",
            "query_attributes": {"session_id": "sess-A"},
            "query_response_hit_ids": ["p1", "p2", "p3"],
        },
        {  # no session: takes its query's
            "action_name": "click",
            "query_id": "q1",
            "client_id": "browser-7",
            "timestamp": "2025-03-01T12:00:04Z",
            "event_attributes": {
                "object": {"object_id": "p2", "object_id_field": "sku"},
                "position": {"ordinal": 2},
            },
        },
        {  # no session and an unknown query: the client is the session
            "action_name": "impression",
            "query_id": "q-unknown",
            "client_id": "browser-9",
            "timestamp": "2025-03-01T12:00:06Z",
            "event_attributes": {"object": {"object_id": 42}, "position": {"ordinal": 1}},
        },
        {
            "action_name": "add_to_cart",
            "session_id": "sess-B",
            "client_id": "browser-7",
            "timestamp": "2025-03-01T12:00:08Z",
            "event_attributes": {"object": {"object_id": "p2"}},
        },
        {
            "session_id": "s1",
            "timestamp": T0,
            "action": "view",
            "product_id": "p5",
        },  # the contract, same file
    ]
    query, click, impression, cart, view = read_events(_jsonl(tmp_path / "ubi.jsonl", rows))
    assert query == Event(
        session_id="sess-A",
        action="search",
        timestamp=T0,
        user_id="browser-7",
        query="red shoes",
        results=("p1", "p2", "p3"),
    )
    assert (click.action, click.session_id, click.user_id, click.product_id, click.position) == (
        "click",
        "sess-A",
        "browser-7",
        "p2",
        2,
    )
    assert (impression.action, impression.session_id, impression.product_id) == ("view", "browser-9", "42")
    assert (cart.action, cart.session_id, cart.position, cart.timestamp) == (
        "add_to_cart",
        "sess-B",
        None,
        T0 + 8,
    )
    assert view.product_id == "p5"


def test_unknown_ubi_action_names_the_known_ones() -> None:
    row = {"action_name": "brand_filter", "client_id": "c", "timestamp": "2025-03-01T12:00:00Z"}
    with pytest.raises(DataError) as info:
        event_from_dict(row, "ubi.jsonl:7")
    message = info.value.message
    assert message.startswith("ubi.jsonl:7: unknown UBI action_name 'brand_filter'")
    assert "click, click_through, view, impression" in message and "purchase" in message


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ({"action": "view", "timestamp": T0, "product_id": "p"}, "missing 'session_id'"),
        ({"session_id": "s", "timestamp": T0, "product_id": "p"}, "missing 'action'"),
        ({"session_id": "s", "action": "view", "product_id": "p"}, "missing 'timestamp'"),
        ({"session_id": "s", "action": "click", "timestamp": T0}, "missing 'product_id'"),
        (
            {"session_id": "s", "action": "hover", "timestamp": T0, "product_id": "p"},
            "unknown action 'hover'; expected one of search, view, click, add_to_cart, purchase",
        ),
        (
            {"session_id": "s", "action": "view", "timestamp": "yesterday", "product_id": "p"},
            "invalid timestamp",
        ),
        ({"session_id": "s", "action": "view", "timestamp": T0, "product_id": "p", "position": 0}, "1-based"),
        ({"session_id": "s", "action": "search", "timestamp": T0, "results": {"a": 1}}, "invalid results"),
        ({"session_id": ["s"], "action": "view", "timestamp": T0, "product_id": "p"}, "'session_id' must be"),
    ],
)
def test_errors_name_the_place_and_the_field(row: dict[str, object], expected: str) -> None:
    with pytest.raises(DataError) as info:
        event_from_dict(row, "log.jsonl:3")
    assert info.value.message.startswith("log.jsonl:3: ")
    assert expected in info.value.message


def test_bad_lines_raise_with_file_and_line(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "e.jsonl", [_session()[0], "{not json", _session()[1]])
    events = read_events(path)
    assert next(events).action == "search"
    with pytest.raises(DataError, match=r"e\.jsonl:2: invalid JSON .*pass --skip-invalid"):
        next(events)
    path.write_bytes(b'{"session_id": "s", "action": "view", "timestamp": 1, "product_id": "\xff"}\n')
    with pytest.raises(DataError, match=r"e\.jsonl:1: invalid UTF-8"):
        list(read_events(path))
    with pytest.raises(DataError, match="no such file; expected a .jsonl, .jsonl.gz or .csv event file"):
        list(read_events(tmp_path / "missing.jsonl"))


def test_skip_invalid_counts_reasons(tmp_path: Path) -> None:
    good = _session()
    rows: list[dict[str, object] | str] = [
        good[0],
        "{not json",
        {"session_id": "s", "action": "hover", "timestamp": T0, "product_id": "p"},
        {"session_id": "s", "action": "click", "timestamp": T0},
        "[1, 2]",
        good[1],
    ]
    report = ReadReport()
    events = list(read_events(_jsonl(tmp_path / "e.jsonl", rows), skip_invalid=True, report=report))
    assert [e.action for e in events] == ["search", "click"]
    assert report.read == 2 and report.n_skipped == 4
    assert report.skipped == {
        "invalid JSON": 1,
        "unknown action 'hover'": 1,
        "missing 'product_id'": 1,
        "not a JSON object": 1,
    }
    assert report.summary().startswith("read 2 events; skipped 4 invalid lines")
    assert report.examples[0].startswith(f"{tmp_path / 'e.jsonl'}:2: invalid JSON")


def test_round_trip_through_the_contract() -> None:
    events = [event_from_dict(r, "t") for r in _session()]
    for event in events:
        assert event_from_dict(event_to_dict(event), "t") == event
    anonymous = event_to_dict(events[4])
    assert anonymous == {
        "session_id": "s0",
        "action": "view",
        "timestamp": T0 + 1,
        "product_id": "p9",
        "category": "Home > Mugs",
    }
    assert isinstance(event_to_dict(Event("s", "view", 5, product_id="p"))["timestamp"], float)


# --------------------------------------------------------------------------------------------- storage


@pytest.fixture
def store(db_url: str) -> Iterator[EventStore]:
    with EventStore(db_url, salt=SALT) as store:
        yield store


def _rows(url: str) -> list[tuple[object, ...]]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text("SELECT * FROM events ORDER BY id"))]
    finally:
        engine.dispose()


def test_user_ids_are_stored_only_as_salted_hashes(store: EventStore) -> None:
    assert store.add(event_from_dict(r, "t") for r in _session()) == 5
    rows = _rows(store.url)
    assert len(rows) == 5
    flat = " ".join(str(v) for row in rows for v in row)
    assert "alice" not in flat
    expected = hmac.new(SALT, b"alice", hashlib.sha256).hexdigest()
    hashes = [e.user_id for e in store.iter_events()]
    assert hashes == [None, expected, expected, expected, expected]  # s0 (anonymous) sorts first
    assert hash_user("alice", SALT) == expected != hash_user("alice", b"another salt")


def test_iter_events_orders_and_filters(store: EventStore) -> None:
    events = [event_from_dict(r, "t") for r in _session()]
    odd = Event("s2", "view", T0 + 2, product_id="p7", category="Apparel_Kids%")
    store.add([events[3], events[1], odd, events[0], events[4], events[2]])
    stored = list(store.iter_events())
    assert [(e.session_id, e.action) for e in stored] == [
        ("s0", "view"),
        ("s1", "search"),
        ("s1", "click"),
        ("s1", "add_to_cart"),
        ("s1", "purchase"),
        ("s2", "view"),
    ]
    search = stored[1]
    assert (search.query, search.results, search.category, search.timestamp) == (
        "red shoes",
        ("p1", "p2", "p3"),
        "Apparel > Shoes",
        T0,
    )
    assert stored[2].position == 2
    assert [e.action for e in store.iter_events(since=T0 + 9)] == ["add_to_cart", "purchase"]
    assert [e.session_id for e in store.iter_events(category_prefix="Apparel >")] == ["s1"]
    # LIKE wildcards in the prefix are literal characters.
    assert [e.product_id for e in store.iter_events(category_prefix="Apparel_")] == ["p7"]
    assert list(store.iter_events(category_prefix="Apparel%")) == []


def test_forget_user_deletes_only_that_user(store: EventStore) -> None:
    store.add(event_from_dict(r, "t") for r in _session())
    store.add([Event("s9", "view", T0, product_id="p1", user_id="bob")])
    assert store.forget_user("alice") == 4
    assert store.forget_user("alice") == 0
    assert sorted(e.session_id for e in store.iter_events()) == ["s0", "s9"]
    assert store.count() == 2


def test_prune_deletes_events_past_the_retention(store: EventStore) -> None:
    day = 86400.0
    store.add([Event(f"s{i}", "view", T0 - i * day, product_id="p") for i in range(10)])
    assert store.prune(7.5, now=T0) == 2  # 8 and 9 days old
    assert store.count() == 8
    assert store.prune(30, now=T0) == 0
    with pytest.raises(ConfigError, match="positive number of days"):
        store.prune(0)


def test_a_bad_line_keeps_the_events_before_it(store: EventStore, tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "e.jsonl", [*_session()[:3], "{broken", *_session()[3:]])
    with pytest.raises(DataError, match=r"e\.jsonl:4: invalid JSON"):
        store.add(read_events(path))
    assert store.count() == 3


def test_ingest_files_prunes_after_adding(store: EventStore, tmp_path: Path) -> None:
    now = datetime.now(UTC).timestamp()
    rows: list[dict[str, object] | str] = [
        {"session_id": "old", "timestamp": now - 40 * 86400, "action": "view", "product_id": "p"},
        {"session_id": "new", "timestamp": now - 3600, "action": "view", "product_id": "p"},
        {"session_id": "new", "timestamp": now, "action": "hover", "product_id": "p"},
    ]
    report = ingest_files([_jsonl(tmp_path / "e.jsonl", rows)], store, skip_invalid=True, retention_days=30)
    assert (report.stored, report.skipped, report.pruned) == (2, 1, 1)
    assert [e.session_id for e in store.iter_events()] == ["new"]


def test_a_store_without_salt_can_read_but_not_hash(db_url: str) -> None:
    with EventStore(db_url) as store:
        assert store.count() == 0 and store.add([]) == 0
        with pytest.raises(ValueError, match="no salt"):
            store.add([Event("s", "view", T0, product_id="p", user_id="u")])


# --------------------------------------------------------------------------------------------- salt


def test_salt_file_is_created_private_and_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv(SALT_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.WARNING, logger="shangpin"):
        salt = load_salt(None)
    path = tmp_path / ".shangpin-salt"
    assert len(salt) == 32 and path.read_bytes() == salt
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "created the salt file" in caplog.text and "forget" in caplog.text
    assert load_salt(None) == salt == load_salt(path, create=False)
    monkeypatch.setenv(SALT_ENV, "from-the-environment")
    assert load_salt(path) == b"from-the-environment"


def test_forget_needs_the_existing_salt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SALT_ENV, raising=False)
    with pytest.raises(ConfigError, match="no salt file at .*a new salt would find no user's events"):
        load_salt(tmp_path / "nope", create=False)
    assert not (tmp_path / "nope").exists()
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(ConfigError, match="is empty"):
        load_salt(tmp_path / "empty")


# --------------------------------------------------------------------------------------------- CLI


def test_cli_ingest_forget_and_prune(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SALT_ENV, raising=False)
    monkeypatch.delenv("SHANGPIN_RETENTION_DAYS", raising=False)
    url = f"sqlite:///{tmp_path / 'ev.db'}"
    salt = tmp_path / "salt"
    rows: list[dict[str, object] | str] = [
        *_session(),
        {"session_id": "s2", "action": "hover", "timestamp": T0, "product_id": "p"},
    ]
    log = _jsonl(tmp_path / "e.jsonl", rows)
    args = ["events", "ingest", str(log), "--db", url, "--salt-file", str(salt), "--skip-invalid"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "stored 5 events, skipped 1 invalid lines" in result.stdout
    assert "unknown action 'hover'" in result.stderr and f"{log}:6" in result.stderr
    assert salt.exists()

    result = runner.invoke(app, ["forget", "--user", "alice", "--db", url, "--salt-file", str(salt)])
    assert result.exit_code == 0, result.output
    assert "deleted 4 events" in result.stdout

    result = runner.invoke(app, ["events", "prune", "--db", url], env={"SHANGPIN_RETENTION_DAYS": "30"})
    assert result.exit_code == 0, result.output
    assert "pruned 1 events older than 30 days; 0 events kept" in result.stdout


def test_cli_stops_at_the_first_bad_line_keeping_earlier_events(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ev.db'}"
    log = _jsonl(
        tmp_path / "e.jsonl", [*_session()[:2], {"session_id": "s", "action": "click", "timestamp": T0}]
    )
    env = {**os.environ, SALT_ENV: "cli-test-salt", "SHANGPIN_PROGRESS": "0"}
    proc = subprocess.run(
        [sys.executable, "-m", "shangpin", "events", "ingest", str(log), "--db", url],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 1, proc.stderr
    assert f"Error: {log}:3: missing 'product_id'" in proc.stderr
    assert "Stored 2 events read before this line" in proc.stderr
    assert not (tmp_path / ".shangpin-salt").exists()  # SHANGPIN_SALT was used
    with EventStore(url) as store:
        assert store.count() == 2


def test_cli_forget_without_the_salt_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SALT_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["forget", "--user", "alice", "--db", f"sqlite:///{tmp_path / 'ev.db'}"])
    assert isinstance(result.exception, ConfigError)  # main() prints it and exits 2
    assert "no salt file at .shangpin-salt" in result.exception.message
    assert not (tmp_path / ".shangpin-salt").exists()  # forget never creates a salt
