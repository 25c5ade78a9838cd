"""Attribute extraction benchmark on OA-Mine (ExtractGPT subset): dev micro-F1, train time, titles/s, peak RSS.

Trains on ../shared/data/extraction/oa-mine/train.jsonl minus a dev split fixed by --seed, scores the dev split with
the ExtractGPT counting, and runs a dictionary-lookup baseline (longest training value of the attribute found in the
title) in the same run. Whole-command figures come from running the real CLI in a subprocess.

    python benchmarks/extraction.py [--dev-fraction 0.2] [--seed 13] [--set key=value ...] [--out benchmarks/out]

Other data: --data FILE (product JSONL, ExtractGPT JSONL, or a character-level BIO/BIOES file such as the Chinese
e-commerce NER set, whose entity types become attributes), and --dev-data FILE to score on a given dev file
instead of carving one:

    python benchmarks/extraction.py --data ../shared/data/zh/ner/train.txt.bieos \
        --dev-data ../shared/data/zh/ner/dev.txt.bieos --out benchmarks/out/zh
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

from shangpin.evaluate import ExtractionScorer, with_unlisted_absent
from shangpin.records import AttributeValue, Product
from shangpin.stages.extract_attributes.encoding import find_value
from shangpin.storage.catalog import product_to_input, read_products

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "extraction" / "oa-mine" / "train.jsonl"


_RSS_WRAPPER = (
    "import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; "
    "sys.stderr.write(f'\\nPEAK_RSS_KIB={resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}\\n'); sys.exit(rc)"
)


def run(cmd: list[str]) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (MiB) of this command alone (measured by a wrapper process), stderr."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _RSS_WRAPPER, *cmd], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr}")
    rss_kib = int(proc.stderr.rsplit("PEAK_RSS_KIB=", 1)[1].split()[0])
    return wall, rss_kib / 1024, proc.stderr


def read_tagged(path: Path) -> list[Product]:
    """Products from a character-level BIO/BIOES file (one "character tag" per line, a blank line between
    titles): each entity type is an attribute whose values are the title's entities of that type; a type with no
    entity in a title is known absent (null), as NER annotation implies."""
    titles: list[list[tuple[str, str]]] = [[]]
    for line in path.read_text(encoding="utf-8").split("\n"):
        if not line.strip():
            if titles[-1]:
                titles.append([])
            continue
        parts = line.split()
        titles[-1].append((" " if len(parts) == 1 else parts[0], parts[-1]))
    titles = [t for t in titles if t]
    kinds = sorted({tag.split("-", 1)[1] for t in titles for _, tag in t if "-" in tag})
    out = []
    for k, chars in enumerate(titles):
        text = "".join(c for c, _ in chars)
        found: dict[str, list[str]] = {kind: [] for kind in kinds}
        start = None
        for i, (_, tag) in enumerate(chars):
            edge, _, kind = tag.partition("-")
            if edge in ("B", "S"):
                start = i
            elif edge == "O" or start is None:
                start = None
                continue
            if edge in ("E", "S") or i + 1 == len(chars) or not chars[i + 1][1].startswith(("I-", "E-")):
                value = text[start : i + 1].strip()
                if value and value not in found[kind]:
                    found[kind].append(value)
                start = None
        attrs = {
            kind: AttributeValue(kind, vs[0], alternatives=tuple(vs[1:])) if vs else None
            for kind, vs in found.items()
        }
        out.append(Product(f"{path.stem}-{k}", text, attributes=attrs))
    return out


def load(path: Path) -> list[Product]:
    if path.suffix in (".bio", ".bioes", ".bieos"):
        return read_tagged(path)
    return list(read_products(path))


def dictionary_baseline(train: list[Product], dev: list[Product]) -> dict[str, float]:
    values: dict[tuple[str, str], set[str]] = defaultdict(set)
    for p in train:
        for name, av in p.attributes.items():
            if av is not None:
                values[(p.category_path or "", name)].add(av.value)
    scorer = ExtractionScorer()
    for p in dev:
        pred = {}
        for name in p.attributes:
            for v in sorted(values.get((p.category_path or "", name), ()), key=lambda v: (-len(v), v)):
                if find_value(p.title, v, []):
                    pred[name] = AttributeValue(name, v)
                    break
        scorer.add(p, pred)
    return scorer.metrics()


def score_file(
    gold: list[Product], out_file: Path, unlisted_absent: dict[str, set[str]] | None = None
) -> dict[str, float]:
    rows = {r["id"]: r for r in map(json.loads, out_file.read_text(encoding="utf-8").splitlines())}
    scorer = ExtractionScorer()
    for g in gold:
        pred = {
            k: AttributeValue(k, v["value"], v["score"])
            for k, v in rows[g.product_id].get("attributes", {}).items()
        }
        scorer.add(with_unlisted_absent(g, unlisted_absent), pred)
    return scorer.metrics()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument(
        "--dev-data", type=Path, default=None, help="score on this file instead of a carved split"
    )
    ap.add_argument("--dev-fraction", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--set", action="append", default=[], help="stage override, e.g. num_layers=4")
    ap.add_argument("--throughput-n", type=int, default=10_000, help="titles in the throughput file")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out")
    args = ap.parse_args()
    if not args.data.exists():
        sys.exit(f"{args.data} not found: this benchmark needs ../shared/data beside the repository")
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    products = load(args.data)
    if args.dev_data is not None:
        train, dev = products, load(args.dev_data)
    else:
        rng = random.Random(args.seed)
        idx = list(range(len(products)))
        rng.shuffle(idx)
        n_dev = int(len(products) * args.dev_fraction)
        dev = [products[i] for i in sorted(idx[:n_dev])]
        train = [products[i] for i in sorted(idx[n_dev:])]
    for name, items in (("train", train), ("dev", dev)):
        with open(out / f"{name}.jsonl", "w", encoding="utf-8") as fh:
            fh.writelines(json.dumps(product_to_input(p), ensure_ascii=False) + "\n" for p in items)
    with open(out / "dev_unlabelled.jsonl", "w", encoding="utf-8") as fh:
        fh.writelines(
            json.dumps(
                {"id": p.product_id, "title": p.title, "category": p.category_path}, ensure_ascii=False
            )
            + "\n"
            for p in dev
        )
    rng2 = random.Random(0)
    with open(out / "throughput.jsonl", "w", encoding="utf-8") as fh:
        for i in range(args.throughput_n):
            p = dev[rng2.randrange(len(dev))]
            row = {"id": f"t{i}", "title": p.title, "category": p.category_path}
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")

    env = {**os.environ, "SHANGPIN_PROGRESS": "0"}
    os.environ.update(env)
    cli = [sys.executable, "-m", "shangpin"]
    model = out / "model"
    sets = [x for s in args.set for x in ("--set", s)]
    train_s, train_rss, _ = run(
        [*cli, "train", "--task", "extract", "--data", str(out / "train.jsonl"), "--model", str(model), *sets]
    )
    dev_s, _, _ = run(
        [
            *cli,
            "predict",
            "--model",
            str(model),
            "--data",
            str(out / "dev_unlabelled.jsonl"),
            "--out",
            str(out / "dev_pred.jsonl"),
        ]
    )
    schema: dict[str, set[str]] = defaultdict(set)
    for p in train:
        schema[p.category_path or ""].update(p.attributes)
    model_m = score_file(dev, out / "dev_pred.jsonl")
    model_strict = score_file(dev, out / "dev_pred.jsonl", unlisted_absent=schema)
    base = dictionary_baseline(train, dev)
    pred_s, pred_rss, _ = run(
        [
            *cli,
            "predict",
            "--model",
            str(model),
            "--data",
            str(out / "throughput.jsonl"),
            "--out",
            str(out / "throughput_pred.jsonl"),
        ]
    )
    # Steady state: model loaded once, titles/s over the same file in-process.
    from shangpin.pipeline import Pipeline

    t0 = time.perf_counter()
    pipeline = Pipeline.load(model)
    load_s = time.perf_counter() - t0
    items = list(read_products(out / "throughput.jsonl"))
    t0 = time.perf_counter()
    n = sum(1 for _ in pipeline.pipe(items, batch_size=1024))
    steady = n / (time.perf_counter() - t0)
    # The same model with the dictionary fallback off (it only acts at prediction time).
    stage = pipeline.get("extract_attributes")
    stage.set_params(dictionary_fallback=False)
    no_dict = ExtractionScorer()
    for g, p in zip(dev, stage.predict(dev), strict=True):
        no_dict.add(g, p)
    # ... and with span tidying off (also a prediction-time switch).
    stage.set_params(dictionary_fallback=True, tidy_spans=False)
    no_tidy = ExtractionScorer()
    for g, p in zip(dev, stage.predict(dev), strict=True):
        no_tidy.add(g, p)
    meta = json.loads((model / "extract_attributes" / "meta.json").read_text())
    result = {
        "data": str(args.data),
        "dev_data": str(args.dev_data) if args.dev_data else None,
        "seed": args.seed,
        "n_train": len(train),
        "n_dev": len(dev),
        "overrides": args.set,
        "cores": len(os.sched_getaffinity(0)),
        "model": {k: round(v, 2) for k, v in model_m.items() if k.startswith(("micro", "macro"))},
        "model_unlisted_absent": {
            k: round(v, 2) for k, v in model_strict.items() if k.startswith(("micro", "macro"))
        },
        "model_without_dictionary_fallback": {
            k: round(v, 2) for k, v in no_dict.metrics().items() if k.startswith(("micro", "macro"))
        },
        "model_without_span_tidying": {
            k: round(v, 2) for k, v in no_tidy.metrics().items() if k.startswith(("micro", "macro"))
        },
        "dictionary": {k: round(v, 2) for k, v in base.items() if k.startswith(("micro", "macro"))},
        "threshold": meta["train"].get("threshold"),
        "train_command_seconds": round(train_s, 1),
        "train_peak_rss_mib": round(train_rss),
        "predict_dev_command_seconds": round(dev_s, 2),
        "predict_command_titles_per_s": round(args.throughput_n / pred_s, 1),
        "predict_command_seconds": round(pred_s, 2),
        "predict_peak_rss_mib": round(pred_rss),
        "model_load_seconds": round(load_s, 2),
        "steady_titles_per_s": round(steady, 1),
    }
    (out / "extraction.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
