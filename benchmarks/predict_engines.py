"""Batch engines benchmark: products/s of `shangpin predict`, local (2 and 1 threads) and ray (1 and 2 actors).

Each run is the real command in a subprocess, timed whole (model loading, and for Ray starting the local
instance and its actors, included), on a file of about 10,000 products: the OA-Mine titles repeated with
fresh ids. The outputs of all runs are compared byte for byte. Uses demo/model (`make demo` builds it).
`--kill-after N` adds a resumed run: the local engine killed (SIGKILL, through the test hook) after N chunks,
then the same command again; its time is the two runs together.

    python benchmarks/predict_engines.py [--model demo/model] [--n 10000] [--workers 1 2] [--local-threads 2 1]
        [--cpus 0,1] [--batch-size 1024] [--kill-after 5]
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "extraction" / "oa-mine" / "train.jsonl"


def make_products(source: Path, n: int, path: Path) -> int:
    """`n` products: the lines of `source` (OA-Mine/ExtractGPT format) repeated, each with its own id."""
    rows = [json.loads(line) for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(n):
            row = dict(rows[i % len(rows)])
            row["id"] = f"p{i:06d}"
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return n


def run(cmd: list[str], cpus: str | None, env: dict[str, str] | None = None) -> tuple[float, int, str]:
    """Wall seconds, exit status and stderr of a command (pinned to `cpus` with taskset when given)."""
    if cpus:
        cmd = ["taskset", "-c", cpus, *cmd]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    return time.perf_counter() - t0, proc.returncode, proc.stderr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=ROOT / "demo" / "model")
    ap.add_argument("--data", type=Path, default=DATA, help="source of the titles")
    ap.add_argument("--n", type=int, default=10_000, help="products in the benchmark file")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="Ray actor counts to run")
    ap.add_argument(
        "--local-threads", type=int, nargs="+", default=[2, 1], help="SHANGPIN_THREADS of local runs"
    )
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--cpus", default="0,1", help="taskset CPU list for every run ('' for none)")
    ap.add_argument("--kill-after", type=int, default=0, help="also time a killed-then-resumed local run")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "engines")
    args = ap.parse_args()
    if not (args.model / "pipeline.json").is_file():
        sys.exit(f"{args.model}: no trained model; run 'make demo' first")
    cpus = args.cpus or None
    if cpus and shutil.which("taskset") is None:
        sys.exit("taskset not found; pass --cpus ''")
    products = args.out / "products.jsonl"
    make_products(args.data, args.n, products)
    shangpin = [
        sys.executable,
        "-m",
        "shangpin",
        "predict",
        "--model",
        str(args.model),
        "--data",
        str(products),
    ]
    shangpin += ["--batch-size", str(args.batch_size)]
    env = {**os.environ, "SHANGPIN_PROGRESS": "0"}
    if cpus:
        env.setdefault("SHANGPIN_THREADS", str(len(cpus.split(","))))
    # (name, extra options, SHANGPIN_THREADS); Ray actors always run one inference thread each.
    configs: list[tuple[str, list[str], str | None]] = [
        (f"local, {t} thread{'s' if t > 1 else ''}", [], str(t)) for t in args.local_threads
    ]
    configs += [
        (f"ray, {w} worker{'s' if w > 1 else ''}", ["--engine", "ray", "--workers", str(w)], None)
        for w in args.workers
    ]
    results = []
    reference: Path | None = None
    for name, extra, threads in configs:
        out = args.out / f"out-{len(results)}.jsonl"
        out.unlink(missing_ok=True)
        run_env = {**env, "SHANGPIN_THREADS": threads} if threads else env
        seconds, status, stderr = run([*shangpin, "--out", str(out), "--restart", *extra], cpus, run_env)
        if status != 0:
            sys.exit(f"{name} failed ({status}):\n{stderr}")
        reference = reference or out
        same = filecmp.cmp(reference, out, shallow=False)
        results.append(
            {"engine": name, "seconds": seconds, "products_per_s": args.n / seconds, "identical": same}
        )
        print(
            f"{name}: {seconds:.1f} s, {args.n / seconds:.0f} products/s, identical to local: {same}",
            flush=True,
        )
    if args.kill_after:
        out = args.out / "out-resumed.jsonl"
        out.unlink(missing_ok=True)
        kill_env = {**env, "SHANGPIN_TEST_KILL_AFTER_CHUNKS": str(args.kill_after)}
        first, status, _ = run([*shangpin, "--out", str(out), "--restart"], cpus, kill_env)
        assert status == -9, status
        second, status, stderr = run([*shangpin, "--out", str(out)], cpus, env)
        if status != 0:
            sys.exit(f"resumed run failed ({status}):\n{stderr}")
        same = reference is not None and filecmp.cmp(reference, out, shallow=False)
        seconds = first + second
        name = f"local, {env.get('SHANGPIN_THREADS', 'default')} threads, killed after {args.kill_after} chunks + resumed"
        results.append(
            {"engine": name, "seconds": seconds, "products_per_s": args.n / seconds, "identical": same}
        )
        print(f"{name}: {first:.1f} + {second:.1f} s, identical to local: {same}", flush=True)
    load = os.getloadavg()
    summary = {
        "n": args.n,
        "model": str(args.model),
        "cpus": cpus,
        "batch_size": args.batch_size,
        "load": load,
    }
    (args.out / "results.json").write_text(json.dumps({**summary, "runs": results}, indent=2))
    print(f"\nload average after the runs: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    print("| engine | seconds | products/s | output identical to local |\n|---|---|---|---|")
    for r in results:
        print(
            f"| {r['engine']} | {r['seconds']:.1f} | {r['products_per_s']:.0f} | {'yes' if r['identical'] else 'NO'} |"
        )


if __name__ == "__main__":
    main()
