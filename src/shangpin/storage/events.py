"""Behaviour events: read event logs (our contract or OpenSearch UBI) and store them with salted user hashes.

User ids are personal data, so they never reach the database: `EventStore` keeps an HMAC-SHA256 of each id
under a secret salt (see `load_salt`). The same salt turns a user id into the same hash again, which is what
`forget_user` needs to find one person's events; without the salt the hashes cannot be linked back to ids.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import os
import secrets
import stat
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, func, insert, select
from sqlalchemy import event as sa_event

from shangpin.errors import ConfigError, DataError
from shangpin.records import Event
from shangpin.storage.catalog import ReadReport, read_records
from shangpin.storage.db import EventRow, Store

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Mapping, Sequence

log = logging.getLogger(__name__)

ACTIONS = ("search", "view", "click", "add_to_cart", "purchase")
"""The actions of the event contract; every action but `search` is about one product."""
UBI_ACTIONS = {
    "click": "click",
    "click_through": "click",
    "view": "view",
    "impression": "view",
    "watch": "view",
    "add_to_cart": "add_to_cart",
    "purchase": "purchase",
}
"""UBI `action_name` -> our action (the names of the UBI 1.3 event schema that concern a product)."""
SALT_ENV = "SHANGPIN_SALT"
DEFAULT_SALT_FILE = Path(".shangpin-salt")
RETENTION_ENV = "SHANGPIN_RETENTION_DAYS"
SALT_BYTES = 32
INSERT_CHUNK = 20000
"""Events per insert transaction: fewer commits are faster (20,000 beat 5,000 by about a third in
benchmarks/events.py); a chunk of row tuples takes about 10 MB."""
_MILLIS_ABOVE = 1e11
"""Numeric timestamps above this are epoch milliseconds (JavaScript Date.now(), OpenSearch epoch_millis):
as seconds they would be past the year 5000."""
_COLUMNS = (
    "session_id",
    "user_hash",
    "action",
    "timestamp",
    "product_id",
    "category",
    "query",
    "results",
    "position",
)
"""The columns `add` writes, in the order of its row tuples; `id` and `ingested_at` come from the database."""
_PLACEHOLDERS = {"qmark": "?", "format": "%s", "pyformat": "%s"}
_FIELDS = "[session_id, action, timestamp, user_id?, product_id?, category?, query?, results?, position?]"
_UBI_QUERY_KEYS = frozenset(
    {"user_query", "query_response_hit_ids", "query_response_objects_ids", "query_id"}
)


# --------------------------------------------------------------------------------------------- reading


def read_events(
    path: Path, *, skip_invalid: bool = False, report: ReadReport | None = None
) -> Iterator[Event]:
    """Stream events from a JSONL(.gz) or CSV(.gz) event log, one line at a time.

    Each line may be an event of our contract, a UBI query or a UBI event (see `event_from_dict`), so one file
    can mix them. A UBI event without a session takes the session of its query, when that query came earlier
    in the file; the query ids seen are kept in memory for that.

    Args:
        skip_invalid: skip bad lines (counted in `report` with their reasons) instead of raising DataError.
        report: filled with counts of the events read and the lines skipped.

    Raises:
        DataError: a malformed line (with file and line number), unless `skip_invalid`.
    """
    report = report if report is not None else ReadReport()
    report.unit = "events"
    sessions: dict[str, str] = {}
    yield from read_records(
        path,
        lambda row, where: event_from_dict(row, where, sessions=sessions),
        kind="event",
        skip_invalid=skip_invalid,
        report=report,
    )


def event_from_dict(obj: Mapping[str, Any], where: str, *, sessions: dict[str, str] | None = None) -> Event:
    """Validate one input object into an Event; the format is told by its keys.

    - `action_name` -> a UBI event: action mapped through UBI_ACTIONS, product from
      `event_attributes.object.object_id`, position from `event_attributes.position.ordinal`, user from `client_id`.
    - no `action` but `user_query`, `query_response_hit_ids` or `query_id` -> a UBI query: a `search` event
      whose results are the hit ids.
    - otherwise our contract: {session_id, action, timestamp, user_id?, product_id?, category?, query?,
      results?, position?}.

    Args:
        where: "file:line" (or another place), put first in every error message.
        sessions: UBI query_id -> session id, filled from UBI queries and read for UBI events without a session.

    Raises:
        DataError: a field is missing or malformed; the message names `where` and the field.
    """
    if "action_name" in obj:
        return _from_ubi_event(obj, where, sessions)
    if "action" not in obj and not _UBI_QUERY_KEYS.isdisjoint(obj):
        return _from_ubi_query(obj, where, sessions)
    for key in ("session_id", "action", "timestamp"):
        if obj.get(key) in (None, ""):
            found = ", ".join(sorted(obj)) or "nothing"
            raise DataError(
                f"{where}: missing '{key}'; expected fields {_FIELDS} (or an OpenSearch UBI query or event) "
                f"but found [{found}]; add the field or rename the column"
            )
    action = obj["action"].strip().lower() if isinstance(obj["action"], str) else obj["action"]
    if action not in ACTIONS:
        raise DataError(
            f"{where}: unknown action {obj['action']!r}; expected one of {', '.join(ACTIONS)}; "
            "rename the action to one of these"
        )
    product_id = _id(obj.get("product_id"), "product_id", where)
    if product_id is None and action != "search":
        raise DataError(
            f"{where}: missing 'product_id'; a '{action}' event is about one product, found none; "
            "add the product id, or use action 'search' for a results page"
        )
    return Event(
        session_id=_id(obj["session_id"], "session_id", where) or "",
        action=action,
        timestamp=_timestamp(obj["timestamp"], "timestamp", where),
        product_id=product_id,
        user_id=_id(obj.get("user_id"), "user_id", where),
        category=_text(obj.get("category"), "category", where),
        query=_text(obj.get("query"), "query", where),
        results=_results(obj.get("results"), "results", where),
        position=_position(obj.get("position"), "position", where),
    )


def event_to_dict(event: Event) -> dict[str, Any]:
    """An Event in the input contract, leaving out empty optional fields; `event_from_dict` reads it back."""
    out: dict[str, Any] = {
        "session_id": event.session_id,
        "action": event.action,
        "timestamp": float(event.timestamp),
    }
    for key in ("user_id", "product_id", "category", "query"):
        value = getattr(event, key)
        if value is not None:
            out[key] = value
    if event.results:
        out["results"] = list(event.results)
    if event.position is not None:
        out["position"] = event.position
    return out


def _from_ubi_query(obj: Mapping[str, Any], where: str, sessions: dict[str, str] | None) -> Event:
    attrs = _object(obj.get("query_attributes"), "query_attributes", where)
    client = _id(obj.get("client_id"), "client_id", where) or _id(obj.get("user_id"), "user_id", where)
    session = (
        _id(obj.get("session_id"), "session_id", where)
        or _id(attrs.get("session_id"), "query_attributes.session_id", where)
        or client
    )
    if session is None:
        raise DataError(
            f"{where}: UBI query without a session; expected 'session_id', 'query_attributes.session_id' or "
            f"'client_id', found [{', '.join(sorted(obj))}]; add a client_id or session_id"
        )
    if obj.get("timestamp") in (None, ""):
        raise DataError(
            f"{where}: missing 'timestamp'; expected an ISO-8601 time or epoch seconds in the UBI query, "
            "found none; add the time the query ran"
        )
    query_id = _id(obj.get("query_id"), "query_id", where)
    if query_id is not None and sessions is not None:
        sessions[query_id] = session
    hits = obj.get("query_response_hit_ids")
    if hits is None:
        hits = obj.get("query_response_objects_ids")  # the name before UBI 1.0
    return Event(
        session_id=session,
        action="search",
        timestamp=_timestamp(obj["timestamp"], "timestamp", where),
        user_id=client,
        query=_text(obj.get("user_query"), "user_query", where),
        results=_results(hits, "query_response_hit_ids", where),
    )


def _from_ubi_event(obj: Mapping[str, Any], where: str, sessions: dict[str, str] | None) -> Event:
    name = obj["action_name"]
    action = UBI_ACTIONS.get(name.strip().lower()) if isinstance(name, str) else None
    if action is None:
        raise DataError(
            f"{where}: unknown UBI action_name {name!r}; expected one of {', '.join(UBI_ACTIONS)}; "
            "rename the action to one of these (other UBI actions carry no product signal)"
        )
    attrs = _object(obj.get("event_attributes"), "event_attributes", where)
    target = _object(attrs.get("object"), "event_attributes.object", where)
    position = _object(attrs.get("position"), "event_attributes.position", where)
    client = _id(obj.get("client_id"), "client_id", where) or _id(obj.get("user_id"), "user_id", where)
    query_id = _id(obj.get("query_id"), "query_id", where)
    session = (
        _id(obj.get("session_id"), "session_id", where)
        or _id(attrs.get("session_id"), "event_attributes.session_id", where)
        or (sessions.get(query_id) if sessions is not None and query_id is not None else None)
        or client
    )
    if session is None:
        raise DataError(
            f"{where}: UBI event without a session; expected 'session_id', a 'query_id' of an earlier query "
            "or 'client_id', found none; add a client_id or session_id"
        )
    product_id = _id(target.get("object_id"), "event_attributes.object.object_id", where)
    if product_id is None:
        raise DataError(
            f"{where}: missing 'event_attributes.object.object_id'; a UBI '{name}' event must name the "
            "product it acted on, found none; add the object id"
        )
    if obj.get("timestamp") in (None, ""):
        raise DataError(
            f"{where}: missing 'timestamp'; expected an ISO-8601 time or epoch seconds in the UBI event, "
            "found none; add the time of the event"
        )
    return Event(
        session_id=session,
        action=action,
        timestamp=_timestamp(obj["timestamp"], "timestamp", where),
        product_id=product_id,
        user_id=client,
        position=_position(position.get("ordinal"), "event_attributes.position.ordinal", where),
    )


def _id(value: Any, name: str, where: str) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise DataError(f"{where}: field '{name}' must be a string id, found {value!r}; write the id as a string")


def _text(value: Any, name: str, where: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise DataError(f"{where}: field '{name}' must be a string, found {type(value).__name__} {value!r}")
    return value


def _object(value: Any, name: str, where: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise DataError(f"{where}: field '{name}' must be an object, found {type(value).__name__} {value!r}")
    return value


def _timestamp(value: Any, name: str, where: str) -> float:
    """Epoch seconds from epoch seconds or milliseconds (number or numeric string) or ISO-8601 (no zone = UTC)."""
    seconds: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        try:
            seconds = float(value)
        except ValueError:
            try:
                moment = datetime.fromisoformat(value.strip())
            except ValueError:
                pass
            else:
                if moment.tzinfo is None:
                    moment = moment.replace(tzinfo=UTC)
                seconds = moment.timestamp()
    if seconds is None or not math.isfinite(seconds):
        raise DataError(
            f"{where}: invalid {name}; expected epoch seconds or an ISO-8601 time like "
            f"'2025-03-01T12:00:00Z', found {value!r}; fix the value"
        )
    return seconds / 1000.0 if seconds > _MILLIS_ABOVE else seconds


def _results(value: Any, name: str, where: str) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    if isinstance(value, str):  # a CSV cell: a JSON list or "|"-separated ids
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                raise DataError(
                    f"{where}: invalid {name}; expected a JSON list of product ids, found {value!r} ({exc.msg}); "
                    'write ["a", "b"] or a|b'
                ) from None
        else:
            return tuple(part.strip() for part in text.split("|") if part.strip())
    if not isinstance(value, list):
        raise DataError(
            f"{where}: invalid {name}; expected a list of product ids in the order shown, "
            f"found {type(value).__name__} {value!r}; write a list"
        )
    out = []
    for item in value:
        pid = _id(item, name, where)
        if pid is not None:
            out.append(pid)
    return tuple(out)


def _position(value: Any, name: str, where: str) -> int | None:
    if value is None or value == "":
        return None
    position: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        position = value
    elif isinstance(value, float) and value.is_integer():
        position = int(value)
    elif isinstance(value, str) and value.strip().isdigit():
        position = int(value)
    if position is None or position < 1:
        raise DataError(
            f"{where}: invalid {name}; expected a 1-based rank in the results (1 = first), found {value!r}; "
            "add 1 if your log counts from 0"
        )
    return position


# --------------------------------------------------------------------------------------------- privacy


def load_salt(path: Path | None = None, *, create: bool = True) -> bytes:
    """The secret salt of user-id hashes: SHANGPIN_SALT if set, else the salt file (default `.shangpin-salt`).

    A missing salt file is created (32 random bytes, mode 0600) when `create`; `forget` passes create=False,
    because a new salt would match none of the stored hashes.

    Raises:
        ConfigError: the salt is empty, or the file is missing and `create` is false.
    """
    env = os.environ.get(SALT_ENV)
    if env is not None:
        if not env:
            raise ConfigError(
                f"{SALT_ENV} is set but empty; expected a long secret string; unset it or set it"
            )
        return env.encode("utf-8")
    path = Path(path) if path is not None else DEFAULT_SALT_FILE
    if not path.exists():
        if not create:
            raise ConfigError(
                f"no salt file at {path} and {SALT_ENV} is not set; expected the salt that hashed the user ids at "
                f"ingest; pass it with --salt-file or {SALT_ENV} (a new salt would find no user's events)"
            )
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process created it first: use theirs
            pass
        except OSError as exc:
            raise ConfigError(
                f"cannot create the salt file {path} ({exc.strerror}); expected a writable folder; "
                f"pass --salt-file or set {SALT_ENV}"
            ) from exc
        else:
            with os.fdopen(fd, "wb") as fh:
                fh.write(secrets.token_bytes(SALT_BYTES))
            log.warning(
                "created the salt file %s for hashing user ids; keep it secret and keep it: 'shangpin forget' "
                "needs the same salt to find a user's events",
                path,
            )
    salt = path.read_bytes()
    if not salt:
        raise ConfigError(
            f"the salt file {path} is empty; expected {SALT_BYTES} random bytes; restore it from a backup "
            "(or delete it to start a new salt, which orphans the hashes already stored)"
        )
    if os.name == "posix" and path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("the salt file %s can be read by other users; run: chmod 600 %s", path, path)
    return salt


def hash_user(user_id: str, salt: bytes) -> str:
    """HMAC-SHA256 of a user id under `salt`, as 64 hex characters."""
    return hmac.new(salt, user_id.encode("utf-8"), hashlib.sha256).hexdigest()


# --------------------------------------------------------------------------------------------- storage


class EventStore(Store):
    """Behaviour events in the database at `url`, with user ids hashed on the way in.

    Construction connects and migrates the schema (see `shangpin.storage.db.init_db`). SQLite files are
    switched to WAL journaling with synchronous=NORMAL (readers such as the service are not blocked by an
    ingest; safe against application crashes) and a 64 MiB page cache: the random session and user-hash
    indexes outgrow the 2 MiB default, which roughly halved the insert rate (benchmarks/events.py).

    Args:
        url: an SQLAlchemy database URL; plain `postgresql://` URLs use psycopg 3.
        salt: the secret of the user-id hashes (`load_salt`); needed by `add` and `forget_user`, not by
            reading, counting or pruning.
    """

    def __init__(self, url: str, *, salt: bytes | None = None) -> None:
        super().__init__(url)
        self._salt = salt
        self._hashes: dict[str, str] = {}
        if self._engine.dialect.name == "sqlite" and self._engine.url.database not in (None, "", ":memory:"):
            sa_event.listen(self._engine, "connect", _sqlite_pragmas)
            self._engine.dispose()  # the migration's pooled connection predates the listener
        # Bulk inserts go straight to the driver's executemany with tuples: SQLAlchemy's per-row parameter
        # processing cost as much as the insert itself (issue 6 benchmark). Other drivers take the Core path.
        quote = self._engine.dialect.identifier_preparer.quote
        mark = _PLACEHOLDERS.get(self._engine.dialect.paramstyle)
        self._insert_sql = (
            f"INSERT INTO {quote('events')} ({', '.join(quote(c) for c in _COLUMNS)}) "
            f"VALUES ({', '.join([mark] * len(_COLUMNS))})"
            if mark
            else None
        )

    def add(self, events: Iterable[Event]) -> int:
        """Store events in transactions of INSERT_CHUNK rows; return how many were stored.

        If reading `events` fails, the events read before the failure are stored before the error is
        re-raised, so "stored" always means every event before the bad line.
        """
        stored = 0
        pending: list[tuple[Any, ...]] = []
        iterator = iter(events)
        while True:
            try:
                event_ = next(iterator)
            except StopIteration:
                break
            except Exception:  # a bad input line: keep what came before it, then re-raise
                if pending:
                    self._insert(pending)
                raise
            pending.append(self._row(event_))
            if len(pending) >= INSERT_CHUNK:
                stored += self._insert(pending)
                pending = []
        if pending:
            stored += self._insert(pending)
        return stored

    def iter_events(
        self, *, since: float | None = None, category_prefix: str | None = None
    ) -> Iterator[Event]:
        """Stream stored events ordered by session, then time; `user_id` holds the user's hash.

        Args:
            since: only events at or after this epoch time (seconds).
            category_prefix: only events whose category starts with this text, e.g. "Apparel > Shoes".
        """
        table = EventRow.__table__
        query = select(table).order_by(table.c.session_id, table.c.timestamp, table.c.id)
        if since is not None:
            query = query.where(table.c.timestamp >= since)
        if category_prefix:
            query = query.where(table.c.category.startswith(category_prefix, autoescape=True))
        with self._engine.connect() as conn:
            rows = conn.execution_options(stream_results=True, yield_per=2000).execute(query)
            for row in rows:
                yield Event(
                    session_id=row.session_id,
                    action=row.action,
                    timestamp=row.timestamp,
                    product_id=row.product_id,
                    user_id=row.user_hash,
                    category=row.category,
                    query=row.query,
                    results=tuple(json.loads(row.results)) if row.results else (),
                    position=row.position,
                )

    def forget_user(self, user_id: str) -> int:
        """Delete every event of one user (given by the raw id, hashed here); return how many were deleted."""
        user_hash = hash_user(user_id, self._need_salt())
        with self._engine.begin() as conn:
            return conn.execute(delete(EventRow).where(EventRow.user_hash == user_hash)).rowcount

    def prune(self, retention_days: float, now: float | None = None) -> int:
        """Delete events older than `retention_days` before `now` (default: the current time); return the count.

        Raises:
            ConfigError: `retention_days` is not a positive number.
        """
        if not (
            isinstance(retention_days, int | float) and math.isfinite(retention_days) and retention_days > 0
        ):
            raise ConfigError(
                f"retention must be a positive number of days, found {retention_days!r}; pass --retention-days "
                f"N or set {RETENTION_ENV}"
            )
        cutoff = (time.time() if now is None else now) - retention_days * 86400.0
        with self._engine.begin() as conn:
            return conn.execute(delete(EventRow).where(EventRow.timestamp < cutoff)).rowcount

    def count(self) -> int:
        """The number of stored events."""
        with self._engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(EventRow)).scalar_one()

    def _need_salt(self) -> bytes:
        if not self._salt:
            raise ValueError("this EventStore has no salt to hash user ids; pass salt=load_salt(...)")
        return self._salt

    def _row(self, event_: Event) -> tuple[Any, ...]:
        user_hash = None
        if event_.user_id is not None:
            user_hash = self._hashes.get(event_.user_id)
            if user_hash is None:
                if len(self._hashes) > 100_000:  # a bound on memory; users repeat within a log
                    self._hashes.clear()
                user_hash = self._hashes[event_.user_id] = hash_user(event_.user_id, self._need_salt())
        return (  # in the order of _COLUMNS
            event_.session_id,
            user_hash,
            event_.action,
            float(event_.timestamp),
            event_.product_id,
            event_.category,
            event_.query,
            json.dumps(list(event_.results), ensure_ascii=False) if event_.results else None,
            event_.position,
        )

    def _insert(self, rows: list[tuple[Any, ...]]) -> int:
        with self._engine.begin() as conn:
            if self._insert_sql is not None:
                conn.exec_driver_sql(self._insert_sql, rows)
            else:
                conn.execute(insert(EventRow), [dict(zip(_COLUMNS, row, strict=True)) for row in rows])
        return len(rows)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA cache_size=-65536")
    cursor.close()


# --------------------------------------------------------------------------------------------- ingest


@dataclass
class IngestReport:
    """What `ingest_files` stored, skipped and pruned.

    Attributes:
        files: per input file, what was read and skipped.
        stored: events written to the database.
        pruned: events deleted afterwards for being older than the retention.
        seconds: wall time of reading and storing.
    """

    files: dict[str, ReadReport] = field(default_factory=dict)
    stored: int = 0
    pruned: int = 0
    seconds: float = 0.0

    @property
    def skipped(self) -> int:
        return sum(r.n_skipped for r in self.files.values())

    def summary(self) -> str:
        rate = self.stored / self.seconds if self.seconds > 0 else 0.0
        text = f"stored {self.stored} events, skipped {self.skipped} invalid lines ({rate:.0f} events/s)"
        if self.pruned:
            text += f"; pruned {self.pruned} events past the retention"
        return text


def ingest_files(
    paths: Sequence[Path],
    store: EventStore,
    *,
    skip_invalid: bool = False,
    retention_days: float | None = None,
) -> IngestReport:
    """Read event logs into `store`, then delete events older than `retention_days` (when given).

    Raises:
        DataError: a bad line when not `skip_invalid`; events before it (and earlier files) stay stored,
            and the message says how many.
    """
    from shangpin._progress import track

    report = IngestReport()
    t0 = time.perf_counter()
    for path in paths:
        read = report.files[str(path)] = ReadReport(unit="events")
        try:
            report.stored += store.add(
                track(
                    read_events(path, skip_invalid=skip_invalid, report=read), f"ingesting {Path(path).name}"
                )
            )
        except DataError as exc:
            report.stored += read.read
            raise DataError(
                f"{exc.message}. Stored {report.stored} events read before this line; ingesting the same file "
                "again stores them twice, so ingest only the lines after it"
            ) from None
    report.seconds = time.perf_counter() - t0
    if retention_days is not None:
        report.pruned = store.prune(retention_days)
    return report
