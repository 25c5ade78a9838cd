"""Synthetic products with known answers (every attribute value is a span of the title)."""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from shangpin.records import AttributeValue, CategoryPrediction, Product, ScoredLabel
from shangpin.storage.catalog import product_to_input

BRANDS = ["Acme", "Northwind", "Blue Harbor", "Kestrel", "Juniper Co", "Orbit"]
COLORS = ["Red", "Navy Blue", "Black", "Olive Green", "White", "Pink"]
SIZES = ["7 M US", "8 M US", "9.5 M US", "10 M US", "11 W US"]
GENDERS = ["Women's", "Men's", "Unisex"]
SHOE_TYPES = ["Running Shoe", "Loafer", "Ankle Boot", "Sandal"]
ROASTS = ["Dark Roast", "Medium Roast", "Light Roast"]
FLAVORS = ["Hazelnut", "French Vanilla", "Caramel", "Mocha"]
WEIGHTS = ["12 oz", "2 lb", "340 g", "32 Ounce"]


def shoe(rng: random.Random, i: int) -> Product:
    b, g, t, c, s = (rng.choice(x) for x in (BRANDS, GENDERS, SHOE_TYPES, COLORS, SIZES))
    title = f"{b} {g} {t}, {c}, {s}"
    attrs = {"Brand": b, "Gender": g, "Shoe type": t, "Color": c, "Size": s}
    return _product(f"shoe-{i}", title, "Apparel > Shoes", attrs, tags=[g, c])


def coffee(rng: random.Random, i: int) -> Product:
    b, r, f, w = (rng.choice(x) for x in (BRANDS, ROASTS, FLAVORS, WEIGHTS))
    title = f"{b} {f} Ground Coffee, {r}, {w} Bag"
    attrs = {"Brand": b, "Roast type": r, "Flavor": f, "Net content": w}
    return _product(f"coffee-{i}", title, "Food > Coffee", attrs, tags=[f, r], description=f"Roasted by {b}.")


def _product(
    pid: str, title: str, category: str, attrs: dict[str, str], tags: list[str], description: str = ""
) -> Product:
    return Product(
        product_id=pid,
        title=title,
        description=description,
        category=CategoryPrediction(path=category),
        attributes={k: AttributeValue(name=k, value=v) for k, v in attrs.items()},
        tags=[ScoredLabel(t, 1.0) for t in tags],
    )


def tiny_products(n: int = 40, seed: int = 0) -> list[Product]:
    """`n` products, half shoes and half coffee, deterministic for a seed."""
    rng = random.Random(seed)
    return [(shoe if i % 2 == 0 else coffee)(rng, i) for i in range(n)]


def write_products(path: Path, products: Iterable[Product]) -> Path:
    """Products as input JSONL at `path`, the file `shangpin train/predict --data` reads."""
    path.write_text("".join(json.dumps(product_to_input(p)) + "\n" for p in products), encoding="utf-8")
    return path


def tiny_bert(
    *,
    vocab_size: int = 50,
    hidden_size: int = 16,
    layers: int = 1,
    heads: int = 2,
    intermediate_size: int = 32,
    labels: int = 3,
    seed: int = 0,
) -> Any:
    """A BertForTokenClassification small enough to train or export within a test, initialised from `seed`."""
    import torch
    from transformers import BertConfig, BertForTokenClassification

    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate_size,
        num_labels=labels,
    )
    torch.manual_seed(seed)
    return BertForTokenClassification(config)
