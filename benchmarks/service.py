"""Service benchmark (issue 7): `shangpin serve` on loopback, measured from a client process on the same 2 cores.

Serves a model with the extraction and categorisation stages (copied out of --model, default demo/model, which
`make demo` builds) with API keys on and rate limits off, on a fresh SQLite database, then measures:
- single: one product per POST /v1/enrich, one request at a time (--single requests): p50/p99 latency;
- batch: 256 products per POST /v1/enrich, one client at a time: products/s through the service;
- load: 32 concurrent clients posting one product each for --seconds: errors, p50/p99, requests/s, and the
  model batch sizes micro-batching formed (from /metrics);
- server peak RSS (VmHWM of the server process).
Products are titles from --data (default demo/products.jsonl), without their categories.

    python benchmarks/service.py [--model demo/model] [--seconds 60] [--single 1000] [--out benchmarks/out]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent / "shangpin"
STAGES = ("categorize", "extract_attributes")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def summary(latencies: list[float]) -> dict[str, float]:
    return {
        "n": len(latencies),
        "p50_ms": round(statistics.median(latencies) * 1000, 2),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
        "max_ms": round(max(latencies) * 1000, 2),
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def model_with(stages: tuple[str, ...], source: Path, folder: Path) -> Path:
    from shangpin.pipeline import Pipeline

    target = folder / "model"
    Pipeline.load(source, stages=list(stages)).save(target)
    return target


def start_server(model: Path, folder: Path, port: int) -> tuple[subprocess.Popen[bytes], str]:
    url = f"sqlite:///{folder / 'service.db'}"
    made = subprocess.run(
        [str(BIN), "keys", "create", "--scope", "write", "--db", url],
        capture_output=True,
        text=True,
        check=True,
    )
    token = made.stdout.strip().splitlines()[-1]
    env = {**os.environ, "SHANGPIN_PROGRESS": "0"}
    server = subprocess.Popen(
        [str(BIN), "serve", "--model", str(model), "--port", str(port), "--db", url, "--rate-limit", "0"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(folder / "server.log", "wb"),  # noqa: SIM115 - lives as long as the server
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return server, token
        except httpx.HTTPError:
            time.sleep(0.2)
    server.kill()
    raise SystemExit(f"the server did not start; see {folder / 'server.log'}")


def peak_rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmHWM:\s+(\d+) kB", status)
    return round(int(match.group(1)) / 1024, 1) if match else float("nan")


def single(base: str, headers: dict[str, str], products: list[dict[str, Any]], n: int) -> dict[str, float]:
    latencies = []
    with httpx.Client(base_url=base, headers=headers, timeout=30) as client:
        for i in range(n + 50):
            body = {"products": [products[i % len(products)]]}
            t0 = time.perf_counter()
            answer = client.post("/v1/enrich", json=body)
            elapsed = time.perf_counter() - t0
            answer.raise_for_status()
            if i >= 50:  # warm-up
                latencies.append(elapsed)
    return summary(latencies)


def batch(
    base: str, headers: dict[str, str], products: list[dict[str, Any]], rounds: int
) -> dict[str, float]:
    with httpx.Client(base_url=base, headers=headers, timeout=120) as client:
        client.post("/v1/enrich", json={"products": products[:256]}).raise_for_status()
        t0 = time.perf_counter()
        n = 0
        for r in range(rounds):
            start = (r * 256) % max(len(products) - 256, 1)
            body = {"products": products[start : start + 256]}
            client.post("/v1/enrich", json=body).raise_for_status()
            n += len(body["products"])
        seconds = time.perf_counter() - t0
    return {"products": n, "seconds": round(seconds, 2), "products_per_s": round(n / seconds, 1)}


async def load(
    base: str, headers: dict[str, str], products: list[dict[str, Any]], clients: int, seconds: float
) -> dict[str, Any]:
    latencies: list[float] = []
    errors: dict[str, int] = {}
    stop = time.perf_counter() + seconds

    async def worker(k: int, client: httpx.AsyncClient) -> None:
        i = k
        while time.perf_counter() < stop:
            body = {"products": [products[i % len(products)]]}
            i += clients
            t0 = time.perf_counter()
            try:
                answer = await client.post("/v1/enrich", json=body)
                if answer.status_code != 200:
                    errors[str(answer.status_code)] = errors.get(str(answer.status_code), 0) + 1
                    continue
            except httpx.HTTPError as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                continue
            latencies.append(time.perf_counter() - t0)

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60, limits=limits) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(k, client) for k in range(clients)))
        wall = time.perf_counter() - t0
    return {
        "clients": clients,
        "seconds": round(wall, 1),
        "errors": errors,
        "requests_per_s": round(len(latencies) / wall, 1),
        **summary(latencies),
    }


def batch_sizes(base: str, headers: dict[str, str]) -> dict[str, float]:
    text = httpx.get(f"{base}/metrics", headers=headers).text
    total = float(re.search(r"^shangpin_model_batch_size_sum ([0-9.e+]+)$", text, re.M).group(1))  # type: ignore[union-attr]
    count = float(re.search(r"^shangpin_model_batch_size_count ([0-9.e+]+)$", text, re.M).group(1))  # type: ignore[union-attr]
    return {"model_calls": count, "mean_products_per_call": round(total / count, 2) if count else 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=ROOT / "demo" / "model")
    parser.add_argument("--data", type=Path, default=ROOT / "demo" / "products.jsonl")
    parser.add_argument("--single", type=int, default=1000)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--label", default="", help="Name of this run in the output (e.g. int8 export).")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out")
    args = parser.parse_args()
    if not (args.model / "pipeline.json").is_file():
        raise SystemExit(f"no model at {args.model}; run 'make demo' first or pass --model")
    products = [
        {
            "id": o["id"],
            "title": o["title"],
            **({"description": o["description"]} if o.get("description") else {}),
        }
        for o in map(json.loads, args.data.open(encoding="utf-8"))
    ]
    while len(products) < 512:
        products = products + [{**p, "id": f"{p['id']}-{len(products)}"} for p in products]
    folder = Path(tempfile.mkdtemp(prefix="shangpin-service-bench-"))
    try:
        model = model_with(STAGES, args.model, folder)
        port = free_port()
        server, token = start_server(model, folder, port)
        base = f"http://127.0.0.1:{port}"
        headers = {"Authorization": f"Bearer {token}"}
        try:
            results: dict[str, Any] = {"model": str(args.model), "label": args.label, "stages": list(STAGES)}
            results["single"] = single(base, headers, products, args.single)
            print("single product:", results["single"], flush=True)
            results["batch"] = batch(base, headers, products, args.batches)
            print("batches of 256:", results["batch"], flush=True)
            before = batch_sizes(base, headers)
            results["load"] = asyncio.run(load(base, headers, products, args.clients, args.seconds))
            after = batch_sizes(base, headers)
            calls = after["model_calls"] - before["model_calls"]
            results["load"]["model_calls"] = calls
            results["load"]["mean_products_per_call"] = round(results["load"]["n"] / calls, 2) if calls else 0
            print(f"{args.clients} clients:", results["load"], flush=True)
            results["server_peak_rss_mib"] = peak_rss_mib(server.pid)
            print("server peak RSS MiB:", results["server_peak_rss_mib"])
        finally:
            server.terminate()
            server.wait(timeout=30)
        args.out.mkdir(parents=True, exist_ok=True)
        name = f"service{'-' + args.label if args.label else ''}.json"
        (args.out / name).write_text(json.dumps(results, indent=2))
        print(f"written {args.out / name}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
