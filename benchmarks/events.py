"""Behaviour-event ingest benchmark (issue 6): events/s from a JSONL log into SQLite and PostgreSQL, peak RSS.

Writes N synthetic events to a temporary JSONL file: sessions of a search (20 results shown) followed by views,
clicks with their 1-based position, some add-to-carts and purchases; a fifth of the sessions anonymous; a tenth
of the lines with ISO-8601 timestamps, the rest epoch seconds. Then times, each on the same file:
- parse only: `read_events` (JSON decoding and validation);
- SQLite: `read_events` + `EventStore.add` into a fresh file (hashing the user ids, chunked inserts);
- PostgreSQL: the same into a fresh schema, when the server at --pg-url is reachable (dropped afterwards).
The whole path is timed: parsing, hashing and inserting. Peak RSS is this process's maximum.

    OMP_NUM_THREADS=2 python benchmarks/events.py [--events 200000] [--pg-url URL] [--seed 7]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from shangpin.storage.events import EventStore, read_events

PG_URL = os.environ.get("SHANGPIN_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
CATEGORIES = [
    "Apparel & Accessories > Shoes > Sneakers",
    "Apparel & Accessories > Clothing > Shirts & Tops",
    "Home & Garden > Kitchen & Dining > Cookware",
    "Electronics > Audio > Headphones",
    "Sporting Goods > Outdoor Recreation > Camping",
]
WORDS = [
    "red",
    "running",
    "shoes",
    "men",
    "women",
    "linen",
    "shirt",
    "pan",
    "wireless",
    "tent",
    "cheap",
    "blue",
]


def write_events(path: Path, n: int, seed: int) -> None:
    """N synthetic events, session by session, as JSONL."""
    rng = random.Random(seed)
    t = datetime(2025, 6, 1, tzinfo=UTC).timestamp()
    written = 0
    with open(path, "w", encoding="utf-8") as fh:
        while written < n:
            session = uuid.UUID(int=rng.getrandbits(128)).hex
            user = None if rng.random() < 0.2 else f"user-{rng.randrange(20000)}"
            category = rng.choice(CATEGORIES)
            results = [f"p{rng.randrange(100000)}" for _ in range(20)]
            t += rng.expovariate(1 / 30)
            lines = [
                {
                    "action": "search",
                    "query": " ".join(rng.sample(WORDS, 2)),
                    "results": results,
                    "category": category,
                }
            ]
            for _ in range(rng.randint(1, 8)):
                pos = min(int(rng.expovariate(1 / 4)) + 1, 20)
                action = rng.choices(["view", "click", "add_to_cart", "purchase"], [40, 45, 10, 5])[0]
                lines.append(
                    {"action": action, "product_id": results[pos - 1], "position": pos, "category": category}
                )
            for line in lines[: n - written]:
                t += rng.uniform(1, 60)
                stamp: float | str = round(t, 3)
                if rng.random() < 0.1:
                    stamp = datetime.fromtimestamp(t, UTC).isoformat()
                row = {"session_id": session, "user_id": user, "timestamp": stamp, **line}
                fh.write(json.dumps({k: v for k, v in row.items() if v is not None}) + "\n")
                written += 1


def timed_ingest(url: str, path: Path) -> tuple[int, float, float]:
    """Events stored, wall seconds, and CPU seconds of this process (the database server's not included)."""
    salt = b"benchmark-salt-not-secret"
    with EventStore(url, salt=salt) as store:  # connect + migrate outside the timing
        t0, c0 = time.perf_counter(), time.process_time()
        stored = store.add(read_events(path))
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        assert store.count() == stored
    return stored, seconds, cpu


def line(name: str, n: int, seconds: float, cpu: float) -> str:
    return f"{name}: {n} in {seconds:.2f} s = {n / seconds:,.0f} events/s (CPU {cpu:.2f} s = {n / cpu:,.0f}/CPU-s)"


def pg_schema_url(base: str) -> tuple[str, str] | None:
    """A fresh schema on the server at `base` and a URL using it, or None when the server is not reachable."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import OperationalError

    admin = create_engine(base, connect_args={"connect_timeout": 3})
    schema = f"shangpin_bench_{uuid.uuid4().hex[:12]}"
    try:
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    except OperationalError as exc:
        print(f"PostgreSQL not reachable ({exc.orig}); skipped")
        return None
    finally:
        admin.dispose()
    url = make_url(base).update_query_dict({"options": f"-csearch_path={schema}"})
    return url.render_as_string(hide_password=False), schema


def drop_schema(base: str, schema: str) -> None:
    from sqlalchemy import create_engine, text

    admin = create_engine(base)
    with admin.begin() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--pg-url", default=PG_URL)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "events.jsonl"
        write_events(log, args.events, args.seed)
        print(f"{args.events} events, {log.stat().st_size / 2**20:.1f} MiB of JSONL")

        t0, c0 = time.perf_counter(), time.process_time()
        parsed = sum(1 for _ in read_events(log))
        print(line("parse only (read_events)", parsed, time.perf_counter() - t0, time.process_time() - c0))

        stored, seconds, cpu = timed_ingest(f"sqlite:///{Path(tmp) / 'events.db'}", log)
        print(line("SQLite (read_events + EventStore.add)", stored, seconds, cpu))

        pg = pg_schema_url(args.pg_url)
        if pg is not None:
            url, schema = pg
            try:
                stored, seconds, cpu = timed_ingest(url, log)
                print(line("PostgreSQL (read_events + EventStore.add)", stored, seconds, cpu))
            finally:
                drop_schema(args.pg_url, schema)
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    print(f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
