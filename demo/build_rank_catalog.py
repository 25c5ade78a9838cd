"""Build demo/rank_catalog.jsonl: a synthetic catalog over real Shopify taxonomy categories and attribute values.

The demo of attribute importance (issue 6) needs products with a category path and several attributes. The
Shopify Standard Product Taxonomy (MIT, see taxonomy/LICENSE-SHOPIFY) gives both: each category lists its
attributes and each attribute its values. Products here combine those values at random; nothing else is
invented. Run from the repository root with ../shared beside it: python demo/build_rank_catalog.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent
SHOPIFY = ROOT.parent.parent / "shared" / "data" / "taxonomy" / "shopify" / "data"
LEAVES = {
    "aa-1-13": 160,  # Clothing > Clothing Tops
    "aa-1-12": 120,  # Clothing > Pants
    "aa-1-4": 120,  # Clothing > Dresses
    "aa-1-15": 80,  # Clothing > Skirts
    "aa-1-10": 100,  # Clothing > Outerwear
    "aa-8": 160,  # Shoes
    "aa-6": 80,  # Jewelry
    "lb-4": 80,  # Luggage & Bags > Diaper Bags
}
MAX_ATTRIBUTES = 6
MAX_VALUES = 8


def main() -> None:
    categories: dict[str, dict] = {}
    for path in sorted((SHOPIFY / "categories").glob("*.yml")):
        for node in yaml.safe_load(path.read_text(encoding="utf-8")):
            categories[node["id"]] = node
    parents = {child: node["id"] for node in categories.values() for child in node.get("children", [])}
    attributes = {
        a["friendly_id"]: a
        for a in yaml.safe_load((SHOPIFY / "attributes.yml").read_text())["base_attributes"]
    }
    values = {v["friendly_id"]: v["name"] for v in yaml.safe_load((SHOPIFY / "values.yml").read_text())}
    rng = random.Random(6)
    out = []
    for leaf, count in LEAVES.items():
        chain = [leaf]
        while chain[-1] in parents:
            chain.append(parents[chain[-1]])
        path = " > ".join(categories[c]["name"] for c in reversed(chain))
        names = [
            a
            for a in categories[leaf].get("attributes", [])
            if a in attributes and attributes[a].get("values")
        ]
        names = sorted(names, key=lambda a: (a not in ("color", "target_gender", "size"), a))[:MAX_ATTRIBUTES]
        vocab = {a: [values[v] for v in attributes[a]["values"][:MAX_VALUES] if v in values] for a in names}
        for i in range(count):
            attrs = {attributes[a]["name"]: rng.choice(vocab[a]) for a in names if vocab[a]}
            title = " ".join(attrs.values()) + f" {categories[leaf]['name']}"
            out.append({"id": f"{leaf}-{i}", "title": title, "category": path, "attributes": attrs})
    with (ROOT / "rank_catalog.jsonl").open("w", encoding="utf-8") as fh:
        for row in out:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"wrote {len(out)} products over {len(LEAVES)} categories")


if __name__ == "__main__":
    main()
