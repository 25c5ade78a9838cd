"""Tag recommendation benchmark on the Myntra fashion catalogue, beside Annif's classic backends in the same run.

Products: productDisplayName as the only input; gold tags = articleType, subCategory, gender, baseColour, season,
usage (those recorded). Dev = 20 % chosen with --seed (13). Everything is trained on the other 80 %:
- shangpin's `recommend_tags` stage (defaults; it carves its own 10 % to choose the fusion weight and thresholds),
- TF-IDF (title words 1-2 grams, sublinear) + one-vs-rest logistic regression, C = 1 and C = 10,
- omikuji on the same TF-IDF rows, Parabel (its defaults, Annif's omikuji backend) and Bonsai settings.
F1@5, NDCG@10, P@1/3/5 on each system's ranked list (10 tags); macro-F1 over the gold tags on the top 5, and for
shangpin also on the tags that reached their tuned thresholds ("selected").

Keyphrases: a second stage is trained with every article type of fewer than --rare training products removed
from the tags, so those types are out of vocabulary; on dev products of such a type we count how often a `new`
keyphrase tag names the type (same key, singular or plural; or the type's key inside the phrase's).

    python benchmarks/tags.py [--seed 13] [--out benchmarks/out] [--skip-keyphrases]
    python benchmarks/tags.py --scale MIN_COUNT     # many tags: title word bigrams as extra tags
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from shangpin.evaluate import tag_macro_f1, tag_scores
from shangpin.normalize import value_key
from shangpin.records import Product, ScoredLabel
from shangpin.stages.recommend_tags import TagRecommender
from shangpin.stages.recommend_tags.keyphrases import _singular
from shangpin.storage.catalog import read_products

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "fashion" / "styles.csv"
TAG_FIELDS = ("articleType", "subCategory", "gender", "baseColour", "season", "usage")


def fashion_tagged(path: Path) -> list[Product]:
    """styles.csv rows as products with only a title and the six tag fields as gold tags."""
    out = []
    for p in read_products(path):
        levels = p.category_path.split(" > ") if p.category_path else []
        tags = levels[2:3] + levels[1:2]  # articleType, subCategory
        tags += [av.value for a in ("gender", "baseColour", "season", "usage") if (av := p.attributes.get(a))]
        out.append(Product(p.product_id, p.title, tags=[ScoredLabel(t, 1.0) for t in dict.fromkeys(tags)]))
    return out


def split(products: list[Product], seed: int, fraction: float) -> tuple[list[Product], list[Product]]:
    rng = random.Random(seed)
    order = list(range(len(products)))
    rng.shuffle(order)
    n_dev = int(round(fraction * len(products)))
    dev = sorted(order[:n_dev])
    train = sorted(order[n_dev:])
    return [products[i] for i in train], [products[i] for i in dev]


def keys(tags: list[str]) -> list[str]:
    return list(dict.fromkeys(value_key(t) for t in tags))


def score_ranked(gold: list[list[str]], ranked: list[list[str]]) -> dict[str, float]:
    out = tag_scores(gold, ranked)
    out["macro_f1_top5"], _ = tag_macro_f1(gold, [r[:5] for r in ranked])
    return {k: round(v, 2) for k, v in out.items()}


def baselines(train: list[Product], dev: list[Product], gold: list[list[str]]) -> dict[str, Any]:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.preprocessing import MultiLabelBinarizer

    from shangpin.stages.recommend_tags.models import TreeTagModel

    mlb = MultiLabelBinarizer()
    Y = mlb.fit_transform([keys([t.label for t in p.tags]) for p in train])
    vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1, dtype=np.float32)
    Xt = vec.fit_transform([p.title for p in train])
    Xd = vec.transform([p.title for p in dev])
    Xt.sort_indices()
    Xd.sort_indices()
    results: dict[str, Any] = {}

    def ranked(S: np.ndarray) -> list[list[str]]:
        return [[mlb.classes_[j] for j in np.argsort(-row)[:10] if row[j] > 0] for row in S]

    for C in (1.0, 10.0):
        t0 = time.perf_counter()
        lr = OneVsRestClassifier(LogisticRegression(solver="liblinear", C=C), n_jobs=2).fit(Xt, Y)
        fit_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        S = lr.predict_proba(Xd)
        pred_s = time.perf_counter() - t0
        results[f"TF-IDF + logistic regression (C={C:g})"] = {
            **score_ranked(gold, ranked(S)),
            "train_s": round(fit_s, 1),
            "predict_per_s": round(len(dev) / pred_s),
        }
        print(list(results.items())[-1], flush=True)
    for name, bonsai in (("omikuji Parabel (defaults)", False), ("omikuji Bonsai", True)):
        t0 = time.perf_counter()
        tree = TreeTagModel(top_k=10, bonsai=bonsai, n_threads=2).fit(Xt, Y)
        fit_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        S = tree.scores(Xd)
        pred_s = time.perf_counter() - t0
        results[name] = {
            **score_ranked(gold, ranked(S)),
            "train_s": round(fit_s, 1),
            "predict_per_s": round(len(dev) / pred_s),
        }
        print(list(results.items())[-1], flush=True)
    return results


def run_stage(train: list[Product], dev: list[Product], **params: Any) -> dict[str, Any]:
    """Train the stage, time `pipe` on dev and score it with the stage's own `evaluate` (same metrics as above)."""
    stage = TagRecommender(**params)
    t0 = time.perf_counter()
    stage.fit(train)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    pred = list(stage.pipe(copy.deepcopy(dev), batch_size=256))
    pred_s = time.perf_counter() - t0
    out = {k: round(v, 2) for k, v in stage.evaluate(dev, pred).metrics.items()}
    selected = [[t for t in p.tags if getattr(t, "selected", True)] for p in pred]
    out["tags_selected_per_product"] = round(float(np.mean([len(s) for s in selected])), 2)
    out.update(
        {
            "train_s": round(fit_s, 1),
            "predict_per_s": round(len(dev) / pred_s),
            "linear_weight": stage.train_info_.get("linear_weight"),
            "inner_dev": stage.train_info_.get("dev_metrics"),
        }
    )
    return {"metrics": out, "stage": stage, "pred": pred}


def keyphrase_study(train: list[Product], dev: list[Product], rare: int) -> dict[str, Any]:
    """Hide article types with fewer than `rare` training products; do new tags recover them on dev?"""
    types = [p.tags[0].label for p in train if p.tags]
    counts: dict[str, int] = {}
    for t in types:
        counts[t] = counts.get(t, 0) + 1
    hidden = {value_key(t) for t, n in counts.items() if n < rare}
    stripped = [
        Product(p.product_id, p.title, tags=[t for t in p.tags if value_key(t.label) not in hidden])
        for p in train
    ]
    stripped = [p for p in stripped if p.tags]
    stage = TagRecommender(keyphrases=3, limit=10).fit(stripped)
    targets = [p for p in dev if p.tags and value_key(p.tags[0].label) in hidden]
    t0 = time.perf_counter()
    pred = list(stage.pipe(copy.deepcopy(targets)))
    seconds = time.perf_counter() - t0
    hits, examples, n_new = 0, [], 0
    for g, p in zip(targets, pred, strict=True):
        gold = _singular(value_key(g.tags[0].label))
        new = [t.label for t in p.new_tags]
        n_new += len(new)
        hit = any(_singular(value_key(t)) == gold or gold in value_key(t) for t in new)
        hits += hit
        if len(examples) < 15:
            examples.append({"title": g.title, "hidden_type": g.tags[0].label, "new_tags": new, "hit": hit})
    return {
        "hidden_types": len(hidden),
        "dev_products_of_hidden_types": len(targets),
        "recall_of_hidden_type_by_new_tags": round(100 * hits / max(1, len(targets)), 2),
        "new_tags_per_product": round(n_new / max(1, len(targets)), 2),
        "products_per_s_with_keyphrases": round(len(targets) / max(seconds, 1e-9), 1),
        "examples": examples,
    }


def scale_study(train: list[Product], dev: list[Product], min_count: int) -> dict[str, Any]:
    """Many tags: each training title's word bigrams become tags too (real text-derived tags; quality is not the
    point); train time, predict speed and peak RSS of the stage with that vocabulary."""
    import re

    def bigrams(title: str) -> list[str]:
        w = re.findall(r"\w+", title.lower())
        return [f"{a} {b}" for a, b in zip(w, w[1:], strict=False)]

    many = [
        Product(p.product_id, p.title, tags=p.tags + [ScoredLabel(t, 1.0) for t in bigrams(p.title)])
        for p in train
    ]
    stage = TagRecommender(keyphrases=0, min_count=min_count)
    t0 = time.perf_counter()
    stage.fit(many)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    stage.predict(dev[:2000])
    pred_s = time.perf_counter() - t0
    return {
        "min_count": min_count,
        "n_tags": len(stage.tag_keys_),
        "linear_model": stage.linear_ is not None,
        "train_s": round(fit_s, 1),
        "predict_per_s": round(min(2000, len(dev)) / pred_s),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--dev-fraction", type=float, default=0.2)
    ap.add_argument(
        "--rare", type=int, default=30, help="article types under this many training products are hidden"
    )
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out")
    ap.add_argument("--skip-keyphrases", action="store_true")
    ap.add_argument("--skip-baselines", action="store_true")
    ap.add_argument(
        "--scale",
        type=int,
        default=0,
        help="only the many-tags study, with this min_count (word bigrams as tags)",
    )
    args = ap.parse_args()
    if not DATA.is_file():
        sys.exit(f"expected the fashion data at {DATA}; it is not there")
    os.environ.setdefault("SHANGPIN_THREADS", "2")
    products = fashion_tagged(DATA)
    train, dev = split(products, args.seed, args.dev_fraction)
    gold = [keys([t.label for t in p.tags]) for p in dev]
    print(
        f"{len(train)} train, {len(dev)} dev, {len({t for g in gold for t in g})} distinct dev tags",
        flush=True,
    )
    results: dict[str, Any] = {"n_train": len(train), "n_dev": len(dev), "seed": args.seed}
    if args.scale:
        print(json.dumps(scale_study(train, dev, args.scale)))
        return
    if not args.skip_baselines:
        results["baselines"] = baselines(train, dev, gold)
    run = run_stage(train, dev, keyphrases=0)
    results["shangpin"] = run["metrics"]
    print("shangpin", run["metrics"], flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        # Whole `shangpin predict` command (start-up, model load, JSONL in and out) on the dev products.
        from shangpin.pipeline import Pipeline

        model = Path(tmp) / "model"
        Pipeline([run["stage"]]).save(model)
        data = Path(tmp) / "dev.jsonl"
        with open(data, "w", encoding="utf-8") as fh:
            for p in dev:
                fh.write(json.dumps({"id": p.product_id, "title": p.title}) + "\n")
        t0 = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "shangpin",
                "predict",
                "--model",
                str(model),
                "--data",
                str(data),
                "--out",
                str(Path(tmp) / "o.jsonl"),
            ],
            check=True,
        )
        results["shangpin"]["predict_command_per_s"] = round(len(dev) / (time.perf_counter() - t0))
        results["shangpin"]["model_mb"] = round(
            sum(f.stat().st_size for f in model.rglob("*") if f.is_file()) / 2**20, 1
        )
    if not args.skip_keyphrases:
        results["keyphrases"] = keyphrase_study(train, dev, args.rare)
        print("keyphrases", {k: v for k, v in results["keyphrases"].items() if k != "examples"}, flush=True)
    results["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "tags.json").write_text(
        json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    print(json.dumps({k: v for k, v in results.items() if k != "keyphrases"}, indent=2))


if __name__ == "__main__":
    main()
