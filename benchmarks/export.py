"""Export benchmark (issue 7, compression): fp32 vs int8 exports of the same trained models, same dev splits.

- extract: OA-Mine, the dev split of benchmarks/extraction.py (20 %, `--seed 13`); one model trained with
  `--set quantize=false` (fp32 span tagger), then `shangpin export --quantize none` (fp32, copied) and
  `--quantize int8` (static int8, calibrated on the training split), both scored on the same 290 dev titles.
- categorize: MWPD 2020, trained on train.json with `--set encoder=minilm`, scored on validation.json as
  benchmarks/categorization.py does; the trained sentence graph is int8 (training writes it so), `--quantize none`
  re-exports it fp32 from the shipped MiniLM, `--quantize int8` copies it.
- tags: keyphrase tags (`new_tags`) of the torch checkpoint the stage runs as trained vs its fp32 and int8 ONNX
  exports, on validation titles of MWPD (agreement with torch; no gold exists for new tags).

Quality is computed in-process with `Stage.predict` / `Pipeline.pipe`; speed is titles/s of `Pipeline.pipe` after
loading (the variants take turns for `--repeat` rounds; the fastest run counts), and items per CPU-second of
the process, which shared cores disturb less; threads are pinned by `--threads`. Sizes: graph files and whole
model directories.

    python benchmarks/export.py [--tasks extract,categorize,tags] [--workdir /tmp/export-bench] [--threads 2]
        [--extract-model DIR] [--categorize-model DIR]

`--extract-model` / `--categorize-model` reuse models trained as above (e.g. `benchmarks/extraction.py --set
quantize=false` writes one to benchmarks/out/model with the same split); the training file's SHA-256 is checked.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
OA_MINE = SHARED / "extraction" / "oa-mine" / "train.jsonl"
MWPD = SHARED / "categorization" / "mwpd2020"


def log(msg: str) -> None:
    sys.stderr.write(f"[{time.strftime('%H:%M:%S')}] {msg}\n")
    sys.stderr.flush()


def cli(*args: str) -> float:
    """Run `shangpin ARGS`, return its wall seconds; stop with its stderr when it fails."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "shangpin", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"command failed ({proc.returncode}): shangpin {' '.join(args)}\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t0


def speeds(runs: dict[str, Callable[[], int]], repeat: int) -> dict[str, dict[str, float]]:
    """Per variant: items/s of its fastest run (wall) and items per CPU-second of this process (all its threads).

    The variants take turns, `repeat` rounds, so that a load from other processes falls on all of them alike; the
    CPU-time figure depends far less on such load than the wall-clock one."""
    best: dict[str, dict[str, float]] = {k: {"per_s": 0.0, "per_cpu_s": 0.0} for k in runs}
    for _ in range(repeat):
        for name, fn in runs.items():
            t0, c0 = time.perf_counter(), time.process_time()
            n = fn()
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            best[name]["per_s"] = max(best[name]["per_s"], round(n / wall, 1))
            best[name]["per_cpu_s"] = max(best[name]["per_cpu_s"], round(n / max(cpu, 1e-9), 1))
    return best


def mb(path: Path) -> float:
    files = [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file()]
    return round(sum(f.stat().st_size for f in files) / 1e6, 1)


def sizes(folder: Path, graph: dict[str, Any]) -> dict[str, Any]:
    """The graph's description with its size and the size of the whole model folder, in MB."""
    return {"graph": graph, "graph_mb": mb(folder / graph["file"]), "model_dir_mb": mb(folder)}


def export_variants(model: Path, work: Path, calibration: Path | None = None) -> dict[str, Path]:
    """`shangpin export` of `model` as fp32 and int8 (the CLI, as a user runs it)."""
    out = {}
    for quantize, name in (("none", "fp32"), ("int8", "int8")):
        target = work / f"model-{name}"
        args = ["export", "--model", str(model), "--quantize", quantize, "--out", str(target), "--force"]
        if calibration is not None:
            args += ["--calibration", str(calibration)]
        seconds = cli(*args)
        log(f"exported {name} in {seconds:.1f} s")
        out[name] = target
    return out


def graph_info(model: Path) -> list[dict[str, Any]]:
    return json.loads((model / "pipeline.json").read_text())["export"]["graphs"]


# --------------------------------------------------------------------------- extraction


def extraction(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from shangpin._util import file_sha256
    from shangpin.evaluate import ExtractionScorer
    from shangpin.pipeline import Pipeline
    from shangpin.storage.catalog import product_to_input, read_products

    work.mkdir(parents=True, exist_ok=True)
    products = list(read_products(OA_MINE))
    rng = random.Random(args.seed)  # the carving of benchmarks/extraction.py
    idx = list(range(len(products)))
    rng.shuffle(idx)
    n_dev = int(len(products) * 0.2)
    dev = [products[i] for i in sorted(idx[:n_dev])]
    train = [products[i] for i in sorted(idx[n_dev:])]
    train_file = work / "train.jsonl"
    with open(train_file, "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(product_to_input(p), ensure_ascii=False) + "\n" for p in train)
    model = args.extract_model or work / "model"
    if args.extract_model is None and not (model / "pipeline.json").is_file():
        log("training the extraction model (fp32 graph: quantize=false)")
        seconds = cli(
            "train",
            "--task",
            "extract",
            "--data",
            str(train_file),
            "--model",
            str(model),
            "--set",
            "quantize=false",
        )
        log(f"trained in {seconds:.0f} s")
    meta = json.loads((model / "extract_attributes" / "meta.json").read_text())
    if meta["train"].get("data_sha256") != file_sha256(train_file):
        sys.exit(
            f"{model} was not trained on this split's training file ({train_file}); retrain or drop --extract-model"
        )
    variants = export_variants(model, work, calibration=train_file)
    rng2 = random.Random(0)
    stream = [dev[rng2.randrange(len(dev))] for _ in range(args.throughput_n)]
    rows: dict[str, Any] = {}
    runs: dict[str, Callable[[], int]] = {}
    for name, folder in variants.items():
        pipeline = Pipeline.load(folder)
        stage = pipeline.get("extract_attributes")
        preds = stage.predict(dev)
        scorer = ExtractionScorer()
        for g, p in zip(dev, preds, strict=True):
            scorer.add(g, p)
        alone = [stage.predict([p])[0] for p in dev[:100]]
        changed = sum(
            {k: v.value for k, v in a.items()} != {k: v.value for k, v in b.items()}
            for a, b in zip(alone, preds[:100], strict=True)
        )
        (graph,) = [g for g in graph_info(folder) if g["file"].startswith("extract_attributes/")]

        def run(p: Pipeline = pipeline) -> int:
            copies = [dataclasses.replace(x, extracted={}) for x in stream]
            return sum(1 for _ in p.pipe(copies, batch_size=1024))

        rows[name] = {
            **{k: round(v, 2) for k, v in scorer.metrics().items() if k.startswith(("micro", "macro"))},
            "titles_changed_batch_1_vs_290_of_100": changed,
            **sizes(folder, graph),
        }
        runs[name] = run
        log(f"extract {name}: {rows[name]['micro_f1']} micro-F1")
    for name, speed in speeds(runs, args.repeat).items():
        rows[name]["titles_per_s"], rows[name]["titles_per_cpu_s"] = speed["per_s"], speed["per_cpu_s"]
    return {
        "model": str(model),
        "n_train": len(train),
        "n_dev": len(dev),
        "throughput_n": len(stream),
        **rows,
    }


# --------------------------------------------------------------------------- categorisation


def _mwpd(path: Path, limit: int | None = None) -> list[Any]:
    from shangpin.storage.catalog import read_products

    out = []
    for p in read_products(path):
        out.append(p)
        if limit is not None and len(out) >= limit:
            break
    return out


def categorization(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from shangpin.evaluate import category_scores
    from shangpin.pipeline import Pipeline

    work.mkdir(parents=True, exist_ok=True)
    model = args.categorize_model or work / "model"
    if args.categorize_model is None and not (model / "pipeline.json").is_file():
        log("training the categoriser (encoder=minilm)")
        seconds = cli(
            "train",
            "--task",
            "categorize",
            "--data",
            str(MWPD / "train.json"),
            "--model",
            str(model),
            "--set",
            "encoder=minilm",
        )
        log(f"trained in {seconds:.0f} s")
    variants = export_variants(model, work)
    valid = _mwpd(MWPD / "validation.json")
    gold = [p.category_path or "" for p in valid]
    rows: dict[str, Any] = {}
    runs: dict[str, Callable[[], int]] = {}
    preds: dict[str, list[str]] = {}
    for name, folder in variants.items():
        pipeline = Pipeline.load(folder)
        bare = [dataclasses.replace(p, category=None) for p in valid]
        preds[name] = [p.category_path or "" for p in pipeline.pipe(bare, batch_size=1024)]
        scores = category_scores(gold, preds[name])
        (graph,) = [g for g in graph_info(folder) if g["file"].startswith("categorize/")]

        def run(p: Pipeline = pipeline) -> int:
            items = [dataclasses.replace(x, category=None) for x in valid[: args.throughput_n]]
            return sum(1 for _ in p.pipe(items, batch_size=1024))

        rows[name] = {
            **{k: round(v, 2) for k, v in scores.items()},
            **sizes(folder, graph),
        }
        runs[name] = run
        log(f"categorize {name}: {scores}")
    for name, speed in speeds(runs, args.repeat).items():
        rows[name]["products_per_s"], rows[name]["products_per_cpu_s"] = speed["per_s"], speed["per_cpu_s"]
    same = sum(a == b for a, b in zip(preds["fp32"], preds["int8"], strict=True))
    return {
        "model": str(model),
        "n_validation": len(valid),
        "same_path_fp32_int8_pct": round(100 * same / len(valid), 2),
        **rows,
    }


# --------------------------------------------------------------------------- keyphrase tags


def tags(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from shangpin.pipeline import Pipeline

    work.mkdir(parents=True, exist_ok=True)
    model = work / "model"
    if not (model / "pipeline.json").is_file():
        train_file = work / "train.jsonl"
        lines = (MWPD / "train.json").read_text(encoding="utf-8").splitlines()[: args.tags_train_n]
        train_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
        cli("train", "--task", "tags", "--data", str(train_file), "--model", str(model))
    variants = {"torch": model, **export_variants(model, work)}
    items = _mwpd(MWPD / "validation.json", args.tags_n)
    outputs: dict[str, list[list[str]]] = {}
    rows: dict[str, Any] = {}
    runs: dict[str, Callable[[], int]] = {}
    for name, folder in variants.items():
        stage = Pipeline.load(folder).get("recommend_tags")
        outputs[name] = [[t.label for t in new] for _, new in stage.predict(items)]
        rows[name] = {}
        if name != "torch":
            (graph,) = [g for g in graph_info(folder) if g["file"].startswith("recommend_tags/")]
            rows[name].update({"graph": graph, "graph_mb": mb(folder / graph["file"])})

        def run(s: Any = stage) -> int:
            return len(s.predict(items))

        runs[name] = run
    for name, speed in speeds(runs, args.repeat).items():
        rows[name]["titles_per_s"], rows[name]["titles_per_cpu_s"] = speed["per_s"], speed["per_cpu_s"]
    ref = outputs["torch"]
    for name in ("fp32", "int8"):
        same = sum(a == b for a, b in zip(ref, outputs[name], strict=True))
        jacc = [_jaccard(set(a), set(b)) for a, b in zip(ref, outputs[name], strict=True)]
        rows[name]["same_keyphrases_as_torch_pct"] = round(100 * same / len(ref), 1)
        rows[name]["mean_jaccard_to_torch"] = round(sum(jacc) / len(jacc), 4)
    return {"n_titles": len(items), "with_keyphrases": sum(bool(r) for r in ref), **rows}


def _jaccard(a: set[str], b: set[str]) -> float:
    return 1.0 if not a and not b else len(a & b) / len(a | b)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="extract,categorize,tags")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/export-bench"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--repeat", type=int, default=3, help="speed runs per variant; the fastest counts")
    ap.add_argument("--throughput-n", type=int, default=2000, help="titles per speed run")
    ap.add_argument("--tags-n", type=int, default=500, help="validation titles for the keyphrase comparison")
    ap.add_argument("--tags-train-n", type=int, default=3000)
    ap.add_argument("--extract-model", type=Path)
    ap.add_argument("--categorize-model", type=Path)
    args = ap.parse_args(argv)
    for var in ("SHANGPIN_THREADS", "OMP_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    os.environ["SHANGPIN_PROGRESS"] = "0"
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    out_file = args.workdir / "export.json"
    results: dict[str, Any] = (
        json.loads(out_file.read_text()) if out_file.is_file() else {}
    )  # other tasks' runs
    results.update({"threads": args.threads, "cores": len(os.sched_getaffinity(0))})
    runners = {"extract": extraction, "categorize": categorization, "tags": tags}
    for task in tasks:
        if task not in runners:
            sys.exit(f"unknown task '{task}'; expected some of {', '.join(runners)}")
        results[task] = runners[task](args, args.workdir / task)
        results[task]["measured_at"] = time.strftime("%Y-%m-%d %H:%M")
        out_file.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
