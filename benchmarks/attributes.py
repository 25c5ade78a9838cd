"""Attribute prediction benchmark: fashion (Myntra styles.csv + images) and image-only garment classes.

Fashion: products = productDisplayName as title, masterCategory > subCategory > articleType as category, year as a
given attribute; predicted: gender, baseColour, season, usage. Dev = 20 % chosen with --seed. Scored per
attribute (accuracy, sklearn macro-F1) for the stage text-only (images withheld), fused (with images, on the dev
products that have one) and image-only (title withheld, same products), beside TF-IDF + linear SVM baselines
trained on the same split in the same run: on the title alone (the classic baseline) and on title + category +
year as one text (the same inputs the stage gets).

Clothing: ../shared/data/images/clothing, the garment class (folder name) from the photo alone: trained on train/,
accuracy and macro-F1 on validation/.

    python benchmarks/attributes.py [--seed 13] [--dev-fraction 0.2] [--out benchmarks/out]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import resource
import sys
import time
from pathlib import Path
from typing import Any

from shangpin.normalize import value_key
from shangpin.records import AttributeValue, Product
from shangpin.stages.predict_attributes import AttributePredictor
from shangpin.storage.catalog import read_products

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
TARGETS = ["gender", "baseColour", "season", "usage"]


def fashion_products(folder: Path) -> list[Product]:
    """styles.csv as shangpin reads it (title, category path, attributes, images/<id>.jpg where present)."""
    return list(read_products(folder / "styles.csv"))


def clothing_products(folder: Path) -> list[Product]:
    return [
        Product(
            product_id=f"{cls.name}/{img.stem}",
            title="",
            image=str(img),
            attributes={"garment": AttributeValue("garment", cls.name)},
        )
        for cls in sorted(p for p in folder.iterdir() if p.is_dir())
        for img in sorted(cls.glob("*.jpg"))
    ]


def scores(gold: list[str], pred: list[str]) -> dict[str, float]:
    from sklearn.metrics import f1_score

    g = [value_key(v) for v in gold]
    p = [value_key(v) for v in pred]
    return {
        "accuracy": round(100 * sum(a == b for a, b in zip(g, p, strict=True)) / max(len(g), 1), 2),
        "macro_f1": round(100 * float(f1_score(g, p, average="macro", zero_division=0)), 2),
    }


def stage_scores(stage: AttributePredictor, products: list[Product], names: list[str]) -> dict[str, Any]:
    t0 = time.perf_counter()
    preds = stage.predict(products)
    seconds = time.perf_counter() - t0
    out: dict[str, Any] = {"products_per_s": round(len(products) / seconds, 1), "n": len(products)}
    for name in names:
        rows = [
            (gold.value, p[name].value if name in p else "", p[name].score if name in p else 0.0)
            for g, p in zip(products, preds, strict=True)
            if (gold := g.attributes.get(name)) is not None
        ]
        out[name] = scores([a for a, _, _ in rows], [b for _, b, _ in rows]) | {
            "n": len(rows),
            "ece": expected_calibration_error(
                [value_key(a) == value_key(b) for a, b, _ in rows], [c for _, _, c in rows]
            ),
        }
    return out


def expected_calibration_error(correct: list[bool], confidence: list[float], bins: int = 10) -> float:
    """ECE in percent: |accuracy - mean score| per equal-width score bin, weighted by the bin's share."""
    if not correct:
        return 0.0
    total, n = 0.0, len(correct)
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        idx = [i for i, c in enumerate(confidence) if lo <= c < hi or (b == bins - 1 and c == 1.0)]
        if idx:
            acc = sum(correct[i] for i in idx) / len(idx)
            conf = sum(confidence[i] for i in idx) / len(idx)
            total += len(idx) / n * abs(acc - conf)
    return round(100 * total, 2)


def svm_baseline(train: list[Product], dev: list[Product], text: Any) -> dict[str, Any]:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.svm import LinearSVC

    out: dict[str, Any] = {}
    for name in TARGETS:
        tr = [p for p in train if p.attributes.get(name) is not None]
        dv = [p for p in dev if p.attributes.get(name) is not None]
        vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
        model = LinearSVC().fit(vec.fit_transform(map(text, tr)), [p.attributes[name].value for p in tr])  # type: ignore[union-attr]
        pred = model.predict(vec.transform(map(text, dv)))
        out[name] = scores([p.attributes[name].value for p in dv], list(pred)) | {"n": len(dv)}  # type: ignore[union-attr]
    return out


def without(
    products: list[Product], *, image: bool = False, text: bool = False, names: list[str]
) -> list[Product]:
    """Copies with the image and/or the text withheld and the predicted attributes' gold removed from inputs."""
    out = []
    for p in products:
        q = copy.copy(p)
        q.attributes = dict(p.attributes)
        if image:
            q.image = None
        if text:
            q.title = ""
        out.append(q)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--dev-fraction", type=float, default=0.2)
    ap.add_argument("--set", action="append", default=[], help="stage parameter, e.g. C=0.5")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out")
    ap.add_argument("--skip-clothing", action="store_true")
    args = ap.parse_args()
    fashion = DATA / "fashion"
    if not (fashion / "styles.csv").is_file():
        sys.exit(f"{fashion}/styles.csv not found: this benchmark needs ../shared/data beside the repository")
    params: dict[str, Any] = {"attributes": TARGETS}
    for item in args.set:
        key, _, value = item.partition("=")
        params[key] = json.loads(value) if value[:1] in "[{0123456789.-tfn" else value
    products = fashion_products(fashion)
    rng = random.Random(args.seed)
    order = list(range(len(products)))
    rng.shuffle(order)
    n_dev = int(len(products) * args.dev_fraction)
    dev = [products[i] for i in sorted(order[:n_dev])]
    train = [products[i] for i in sorted(order[n_dev:])]
    result: dict[str, Any] = {
        "seed": args.seed,
        "n_train": len(train),
        "n_dev": len(dev),
        "n_train_images": sum(p.image is not None for p in train),
        "n_dev_images": sum(p.image is not None for p in dev),
        "params": params,
        "cores": len(os.sched_getaffinity(0)),
    }
    t0 = time.perf_counter()
    stage = AttributePredictor(**params).fit(train)
    result["train_seconds"] = round(time.perf_counter() - t0, 1)
    result["train_info"] = stage.train_info_["attributes"]
    with_img = [p for p in dev if p.image]
    result["stage_text_only_all_dev"] = stage_scores(stage, without(dev, image=True, names=TARGETS), TARGETS)
    result["svm_title_all_dev"] = svm_baseline(train, dev, lambda p: p.title)
    result["svm_title_category_year_all_dev"] = svm_baseline(
        train,
        dev,
        lambda p: (
            f"{p.title} | {p.category_path} | {p.attributes['year'].value if p.attributes.get('year') else ''}"
        ),
    )
    result["stage_text_only_image_products"] = stage_scores(
        stage, without(with_img, image=True, names=TARGETS), TARGETS
    )
    result["stage_fused_image_products"] = stage_scores(stage, with_img, TARGETS)
    result["stage_image_only_image_products"] = stage_scores(
        stage, without(with_img, text=True, names=TARGETS), TARGETS
    )
    result["svm_title_image_products"] = svm_baseline(train, with_img, lambda p: p.title)
    if stage.image_encoder_ is not None and with_img:
        t0 = time.perf_counter()
        stage.image_encoder_.encode([p.image for p in with_img])  # type: ignore[misc]
        result["images_per_s"] = round(len(with_img) / (time.perf_counter() - t0), 1)
    clothing = DATA / "images" / "clothing"
    if not args.skip_clothing and clothing.is_dir():
        c_train, c_val = clothing_products(clothing / "train"), clothing_products(clothing / "validation")
        t0 = time.perf_counter()
        garment = AttributePredictor(attributes=["garment"]).fit(c_train)
        result["clothing_train_seconds"] = round(time.perf_counter() - t0, 1)
        result["clothing_validation"] = stage_scores(garment, c_val, ["garment"])
    result["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "attributes.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
