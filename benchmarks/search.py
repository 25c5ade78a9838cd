"""Search and similar-products benchmark (issue 5): quality of BM25, sentence vectors and their fusion, speed,
index size and memory.

Fashion (../shared/data/fashion/styles.csv, 35,623 Myntra products): the index holds the titles only (id +
productDisplayName; the given category and attributes are withheld, else BM25 would match the very labels it is
scored on).
- Similar products: for --queries products drawn with --seed, the share of the top 10 (the product itself
  excluded) that has the same articleType, gender and baseColour ("strict"), and the same articleType only. The
  ceiling is what a perfect ranker gets (fewer than 10 other products share some triples).
- Attribute queries: one query per (gender, baseColour, articleType) triple with >= 10 products, e.g. "men navy
  blue shirts"; relevant = the products with that triple. The same triples written in Chinese (a small dictionary
  of gender, colour and article words) test the multilingual vectors on an English catalog.
- TF-IDF baseline: sklearn TfidfVectorizer (words, sublinear tf) on the same titles, cosine ranking.

WANDS on MWPD (../shared/data/queries/wands/query.csv, ../shared/data/categorization/mwpd2020): WANDS holds only
Wayfair queries and their product class, no Wayfair products. MWPD 2020 (13,012 web offers, GS1 classes) covers
part of WANDS's furniture and home classes, so the queries whose class maps to a GS1 class (WANDS_TO_GS1 below,
written by hand from the class names) are run against an index of MWPD titles + descriptions (categories and
breadcrumbs withheld); relevant = products of the mapped GS1 class(es). A class-level judgement: "salon chair" counts
every seating product as relevant.

Metrics (../shared/docs/metrics.md): NDCG@10 with binary gains, P@10 = relevant share of the top 10.
Speed: `shangpin index` as a whole command (/usr/bin/time: wall, peak RSS), query latency in-process after loading
(p50/p99 over the attribute queries, encoding included), and one `shangpin search` command end to end.

    python benchmarks/search.py [--workdir /tmp/searchbench] [--encoders use,minilm] [--queries 1000] [--seed 13]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from shangpin.search import SearchIndex
from shangpin.storage.catalog import read_products

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
BIN = Path(sys.executable).parent
K = 10

# WANDS query class -> GS1 GPC level-3 codes of MWPD 2020 (only classes with an unambiguous GS1 home).
_SEATING, _TABLES, _STORAGE, _BEDS = ["75010200"], ["75010300"], ["75010100"], ["75010400"]
_TEXTILE, _BEDDING, _PICTURES, _ORNAMENTS = ["75020100"], ["75020200"], ["75030200"], ["75030100"]
_LIGHTING, _BATH, _GARDEN_FURN, _GARDEN_ORN = ["78030300"], ["79010300"], ["81010300"], ["81010100"]
WANDS_TO_GS1: dict[str, list[str]] = {
    **dict.fromkeys(
        ["Accent Chairs", "Office Chairs", "Bar Stools", "Recliners", "Dining Chairs", "Sofas", "Sectionals",
         "Ottomans", "Kids Chairs", "Indoor Chaise Lounges", "Massage Chairs", "Accent Stools", "Benches"],
        _SEATING,
    ),
    **dict.fromkeys(
        ["Coffee & Cocktail Tables", "Desks", "End Tables", "Sofa & Console Tables", "Dining Tables",
         "Plant & Telephone Tables", "Folding Tables", "Kids Desks"],
        _TABLES,
    ),
    **dict.fromkeys(
        ["Dressers & Chests", "TV Stands & Entertainment Centers", "Office Storage Cabinets", "Bookcases",
         "Shoe Storage", "Wall Mounted Shelves", "Sideboards & Buffets", "Accent Chests / Cabinets",
         "Armoires & Wardrobes", "Shelving & Racks", "Storage Drawers"],
        _STORAGE,
    ),
    **dict.fromkeys(
        ["Beds", "Kids Beds", "Headboards", "Foam and Latex Mattresses", "Daybeds & Guest Beds", "Bed Frames",
         "Adjustable Beds", "Innerspring Mattresses"],
        _BEDS,
    ),
    **dict.fromkeys(
        ["Area Rugs", "Accent Pillows", "Curtains & Drapes", "Furniture Cushions", "Bath Rugs & Mats",
         "Door Mats", "Kitchen Mats", "Dining Linens"],
        _TEXTILE,
    ),
    **dict.fromkeys(
        ["Bedding Sets", "Sheets And Sheet Sets", "Mattress Covers and Protectors", "Crib Bedding Sets"], _BEDDING
    ),
    **dict.fromkeys(["Wall Art", "Wall & Accent Mirrors", "Picture Frames"], _PICTURES),
    "Wall Décor": _PICTURES + _ORNAMENTS,
    **dict.fromkeys(
        ["Decorative Objects", "Candle Holders", "Vases, Urns, Jars, & Bottles", "Wreaths"], _ORNAMENTS
    ),
    "Wall Clocks": ["75030400"],
    **dict.fromkeys(
        ["Chandeliers", "Table Lamps", "Light Bulbs", "Flush Mount Lighting", "Vanity Lighting", "Wall Sconces",
         "Pendant Lights", "Under Cabinet Lighting", "String Lights"],
        _LIGHTING,
    ),
    **dict.fromkeys(
        ["Bathroom Sink Faucets", "Shower Heads", "Towel & Robe Hooks", "Toilet Paper Holders"], _BATH
    ),
    **dict.fromkeys(
        ["Outdoor Conversation Sets", "Patio Sofas", "Patio Rockers & Gliders", "Patio Lounge Chairs",
         "Patio Dining Sets", "Patio Chaise Lounges", "Patio Bar Stools", "Patio Bar Sets"],
        _GARDEN_FURN,
    ),
    **dict.fromkeys(["Garden Statues", "Fountains", "Garden Accents"], _GARDEN_ORN),
    **dict.fromkeys(["Cookware Sets", "Bread & Loaf Pans"], ["73040400"]),
    **dict.fromkeys(
        ["Specialty Serving", "Serving Dishes & Platters", "Plates & Saucers", "Glassware & Barware",
         "Dining Bowls", "Flatware Serving Pieces"],
        ["73040500"],
    ),
}  # fmt: skip

ZH_GENDER = {"Men": "男士", "Women": "女士", "Boys": "男童", "Girls": "女童", "Unisex": "中性"}
ZH_COLOUR = {
    "Black": "黑色", "White": "白色", "Blue": "蓝色", "Navy Blue": "海军蓝", "Red": "红色", "Green": "绿色",
    "Grey": "灰色", "Brown": "棕色", "Pink": "粉色", "Purple": "紫色", "Yellow": "黄色", "Silver": "银色",
    "Gold": "金色", "Beige": "米色", "Orange": "橙色", "Maroon": "栗色", "Olive": "橄榄绿", "Multi": "多色",
}  # fmt: skip
ZH_ARTICLE = {
    "Tshirts": "T恤", "Shirts": "衬衫", "Casual Shoes": "休闲鞋", "Sports Shoes": "运动鞋", "Formal Shoes": "正装鞋",
    "Watches": "手表", "Handbags": "手提包", "Tops": "上衣", "Kurtas": "库尔塔长衫", "Heels": "高跟鞋",
    "Sandals": "凉鞋", "Flip Flops": "人字拖", "Sunglasses": "太阳镜", "Wallets": "钱包", "Belts": "腰带",
    "Jeans": "牛仔裤", "Shorts": "短裤", "Socks": "袜子", "Dresses": "连衣裙", "Backpacks": "双肩包",
    "Trousers": "长裤", "Track Pants": "运动裤", "Sweatshirts": "卫衣", "Jackets": "夹克", "Caps": "帽子",
    "Flats": "平底鞋", "Briefs": "内裤", "Bra": "文胸", "Sweaters": "毛衣", "Earrings": "耳环",
}  # fmt: skip

CONFIGS: list[tuple[str, dict[str, Any]]] = [
    ("BM25 only", {"mode": "bm25"}),
    ("embeddings only", {"mode": "embedding"}),
    ("hybrid min-max, BM25 weight 0.3", {"mode": "hybrid", "fusion": "minmax", "weight": 0.3}),
    ("hybrid min-max, BM25 weight 0.5", {"mode": "hybrid", "fusion": "minmax", "weight": 0.5}),
    ("hybrid min-max, BM25 weight 0.6", {"mode": "hybrid", "fusion": "minmax", "weight": 0.6}),
    ("hybrid min-max, BM25 weight 0.7", {"mode": "hybrid", "fusion": "minmax", "weight": 0.7}),
    ("hybrid min-max, BM25 weight 0.8", {"mode": "hybrid", "fusion": "minmax", "weight": 0.8}),
    ("hybrid RRF, BM25 weight 0.5", {"mode": "hybrid", "fusion": "rrf", "weight": 0.5}),
    ("hybrid RRF, BM25 weight 0.7", {"mode": "hybrid", "fusion": "rrf", "weight": 0.7}),
]


def ndcg(rels: list[bool], n_relevant: int, k: int = K) -> float:
    """NDCG@k with binary gains."""
    dcg = sum(1.0 / math.log2(i + 2) for i, r in enumerate(rels[:k]) if r)
    ideal = sum(1.0 / math.log2(i + 2) for i in range(min(n_relevant, k)))
    return dcg / ideal if ideal else 0.0


def run_timed(cmd: list[str]) -> tuple[float, int, str]:
    """Wall seconds, peak RSS (MiB) and stdout of a command, via /usr/bin/time -v."""
    t0 = time.perf_counter()
    out = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if out.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", out.stderr).group(1)) // 1024  # type: ignore[union-attr]
    return wall, rss, out.stdout


def build(model: Path, data: Path, encoder: str) -> dict[str, Any]:
    wall, rss, stdout = run_timed(
        [str(BIN / "shangpin"), "index", "--model", str(model), "--data", str(data), "--encoder", encoder]
    )
    info = json.loads(stdout)
    sizes = {f.name: f.stat().st_size for f in (model / "index").rglob("*") if f.is_file()}
    print(f"  index {model.name}: {info['size']} products in {wall:.1f} s, peak RSS {rss} MiB", flush=True)
    return {
        "products": info["size"],
        "dtype": json.loads((model / "index" / "meta.json").read_text())["dtype"],
        "wall_s": round(wall, 1),
        "products_per_s": round(info["size"] / wall, 1),
        "peak_rss_mib": rss,
        "index_mib": round(sum(sizes.values()) / 2**20, 1),
        "vectors_mib": round(sizes.get("vectors.npy", 0) / 2**20, 1),
        "bm25_mib": round(sum(v for k, v in sizes.items() if k.endswith(".index.npy")) / 2**20, 1),
    }


def rank_all(
    index: SearchIndex, s_bm25: np.ndarray, s_cos: np.ndarray, exclude: int | None
) -> dict[str, list[int]]:
    """Top-10 rows under every configuration, from one pair of score vectors (the ranking code of the index)."""
    out = {}
    for name, cfg in CONFIGS:
        rows = index._rank(  # the same fusion `search`/`similar` run, without recomputing the scores
            s_bm25.copy(), s_cos.copy(), K, cfg["mode"], cfg.get("fusion", "minmax"), cfg.get("weight", 0.5),
            100, exclude,
        )  # fmt: skip
        out[name] = [r for r, _ in rows]
    return out


def tfidf_top(titles: list[str], query_texts: list[str], exclude: list[int | None]) -> list[list[int]]:
    from sklearn.feature_extraction.text import TfidfVectorizer

    vec = TfidfVectorizer(sublinear_tf=True)
    docs = vec.fit_transform(titles)
    tops = []
    for i in range(0, len(query_texts), 256):
        sims = (vec.transform(query_texts[i : i + 256]) @ docs.T).toarray()
        for j, row in enumerate(sims):
            ex = exclude[i + j]
            if ex is not None:
                row[ex] = -1
            top = np.argsort(-row, kind="stable")[:K]
            tops.append([int(r) for r in top if row[r] > 0])
    return tops


def fashion(work: Path, encoders: list[str], n_queries: int, seed: int, limit: int | None) -> dict[str, Any]:
    products = list(read_products(DATA / "fashion" / "styles.csv"))[:limit]
    data = work / "fashion_titles.jsonl"
    with open(data, "w", encoding="utf-8") as fh:
        for p in products:
            fh.write(json.dumps({"id": p.product_id, "title": p.title}, ensure_ascii=False) + "\n")

    def attr(p: Any, name: str) -> str:
        v = p.attributes.get(name)
        return v.value if v is not None else ""

    gold = [
        ((p.category_path or "").split(" > ")[-1], attr(p, "gender"), attr(p, "baseColour")) for p in products
    ]
    titles = [p.title for p in products]
    del products
    groups: dict[tuple[str, str, str], list[int]] = defaultdict(list)
    for row, g in enumerate(gold):
        groups[g].append(row)
    type_count = Counter(g[0] for g in gold)
    rng = random.Random(seed)
    q_rows = rng.sample(range(len(gold)), n_queries)
    ceiling = float(np.mean([min(K, len(groups[gold[r]]) - 1) / K for r in q_rows]))

    # Attribute queries: (gender, colour, article type) triples with >= 10 products, English and Chinese.
    triples = sorted(t for t, rows in groups.items() if len(rows) >= 10 and all(t))
    attr_queries = [(f"{g} {c} {a}".lower(), (a, g, c)) for a, g, c in triples]
    zh_queries = [
        (f"{ZH_GENDER[g]}{ZH_COLOUR[c]}{ZH_ARTICLE[a]}", (a, g, c))
        for a, g, c in triples
        if g in ZH_GENDER and c in ZH_COLOUR and a in ZH_ARTICLE
    ]
    result: dict[str, Any] = {
        "products": len(gold),
        "similar_queries": n_queries,
        "similar_ceiling_strict": round(100 * ceiling, 2),
        "attribute_queries": len(attr_queries),
        "chinese_attribute_queries": len(zh_queries),
        "encoders": {},
    }

    def similar_scores(tops: list[list[int]]) -> dict[str, float]:
        strict = [sum(gold[r] == gold[q] for r in top) / K for q, top in zip(q_rows, tops, strict=True)]
        typ = [sum(gold[r][0] == gold[q][0] for r in top) / K for q, top in zip(q_rows, tops, strict=True)]
        return {
            "strict": round(100 * float(np.mean(strict)), 2),
            "article_type": round(100 * float(np.mean(typ)), 2),
        }

    def query_scores(queries: list[tuple[str, Any]], tops: list[list[int]]) -> dict[str, float]:
        nd, pk = [], []
        for (_, triple), top in zip(queries, tops, strict=True):
            rels = [gold[r] == triple for r in top]
            nd.append(ndcg(rels, len(groups[triple])))
            pk.append(sum(rels) / K)
        return {"ndcg@10": round(100 * float(np.mean(nd)), 2), "p@10": round(100 * float(np.mean(pk)), 2)}

    t0 = time.perf_counter()
    result["tfidf"] = {
        "similar": similar_scores(tfidf_top(titles, [titles[r] for r in q_rows], list(q_rows))),
        "attribute_queries": query_scores(attr_queries, tfidf_top(titles, [q for q, _ in attr_queries], [None] * len(attr_queries))),
    }  # fmt: skip
    print(f"  TF-IDF baseline: {result['tfidf']} ({time.perf_counter() - t0:.0f} s)", flush=True)

    for encoder in encoders:
        model = work / f"fashion-{encoder}"
        res: dict[str, Any] = {"build": build(model, data, encoder)}
        index = SearchIndex.load(model)
        vectors = np.asarray(index.vectors, dtype=np.float32)  # in memory here: thousands of queries
        tops: dict[str, list[list[int]]] = defaultdict(list)
        for q in q_rows:
            qterms = [t for t in index.terms[q].split("\t") if t]
            for name, rows in rank_all(index, index._bm25_scores(qterms), vectors @ vectors[q], q).items():
                tops[name].append(rows)
        res["similar"] = {name: similar_scores(tops[name]) for name, _ in CONFIGS}
        for key, queries in (("attribute_queries", attr_queries), ("chinese_attribute_queries", zh_queries)):
            qvecs = index.encoder.encode([q for q, _ in queries])
            tops = defaultdict(list)
            for (q, _), qv in zip(queries, qvecs, strict=True):
                qterms = list(dict.fromkeys(index_terms(q)))
                for name, rows in rank_all(index, index._bm25_scores(qterms), vectors @ qv, None).items():
                    tops[name].append(rows)
            res[key] = {name: query_scores(queries, tops[name]) for name, _ in CONFIGS}
        res["latency"] = latency(index, [q for q, _ in attr_queries], q_rows[:200])
        res["search_command"] = search_command(model, attr_queries[0][0])
        result["encoders"][encoder] = res
        print(f"  {encoder}: {json.dumps({k: v for k, v in res.items() if k != 'build'})}", flush=True)
        del vectors, index
    result["examples"] = {
        "queries": [q for q, _ in attr_queries[:3]],
        "chinese": [q for q, _ in zh_queries[:3]],
    }
    result["article_types"] = len(type_count)
    return result


def index_terms(text: str) -> list[str]:
    from shangpin.search.text import terms

    return terms(text)


def latency(index: SearchIndex, queries: list[str], rows: list[int]) -> dict[str, float]:
    """Per-call latency in ms of `search` (query encoding included) and `similar`, after a warm-up call."""
    index.search(queries[0])
    index.similar(index.ids[rows[0]])
    out = {}
    for name, calls in (
        ("search", [lambda q=q: index.search(q) for q in queries[:300]]),
        ("similar", [lambda r=r: index.similar(index.ids[r]) for r in rows]),
    ):
        times = []
        for call in calls:
            t0 = time.perf_counter()
            call()
            times.append(1000 * (time.perf_counter() - t0))
        out[f"{name}_p50_ms"] = round(float(np.percentile(times, 50)), 1)
        out[f"{name}_p99_ms"] = round(float(np.percentile(times, 99)), 1)
    return out


def search_command(model: Path, query: str) -> dict[str, float]:
    wall, rss, _ = run_timed([str(BIN / "shangpin"), "search", "--model", str(model), query])
    return {"wall_s": round(wall, 2), "peak_rss_mib": rss}


def wands(work: Path, encoders: list[str]) -> dict[str, Any]:
    import csv

    data = work / "mwpd_text.jsonl"
    classes: list[str] = []
    with open(data, "w", encoding="utf-8") as fh:
        for name in ("train.json", "validation.json"):
            for p in read_products(DATA / "categorization" / "mwpd2020" / name):
                fh.write(json.dumps({"id": f"{name[0]}{p.product_id}", "title": p.title, "description": p.description}) + "\n")  # fmt: skip
                classes.append((p.category_path or "").split(" > ")[-1][:8])
    by_class = Counter(classes)
    with open(DATA / "queries" / "wands" / "query.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    queries = [
        (r["query"], set(WANDS_TO_GS1[r["query_class"]]))
        for r in rows
        if r["query_class"] in WANDS_TO_GS1 and sum(by_class[c] for c in WANDS_TO_GS1[r["query_class"]]) > 0
    ]
    result: dict[str, Any] = {
        "catalog": len(classes),
        "queries_total": len(rows),
        "queries_used": len(queries),
        "wands_classes_mapped": len({r["query_class"] for r in rows if r["query_class"] in WANDS_TO_GS1}),
        "wands_classes_total": len({r["query_class"] for r in rows}),
        "relevant_per_query_mean": round(
            float(np.mean([sum(by_class[c] for c in cs) for _, cs in queries])), 1
        ),
        "encoders": {},
    }

    def score(tops: list[list[int]]) -> dict[str, float]:
        nd, pk = [], []
        for (_, cs), top in zip(queries, tops, strict=True):
            rels = [classes[r] in cs for r in top]
            nd.append(ndcg(rels, sum(by_class[c] for c in cs)))
            pk.append(sum(rels) / K)
        return {"ndcg@10": round(100 * float(np.mean(nd)), 2), "p@10": round(100 * float(np.mean(pk)), 2)}

    texts = [json.loads(line) for line in data.read_text(encoding="utf-8").splitlines()]
    result["tfidf"] = score(
        tfidf_top([t["title"] + " " + t["description"][:200] for t in texts], [q for q, _ in queries], [None] * len(queries))
    )  # fmt: skip
    del texts
    for encoder in encoders:
        model = work / f"mwpd-{encoder}"
        res: dict[str, Any] = {"build": build(model, data, encoder)}
        index = SearchIndex.load(model)
        vectors = np.asarray(index.vectors, dtype=np.float32)
        qvecs = index.encoder.encode([q for q, _ in queries])
        tops: dict[str, list[list[int]]] = defaultdict(list)
        for (q, _), qv in zip(queries, qvecs, strict=True):
            qterms = list(dict.fromkeys(index_terms(q)))
            for name, rows_ in rank_all(index, index._bm25_scores(qterms), vectors @ qv, None).items():
                tops[name].append(rows_)
        res["queries"] = {name: score(tops[name]) for name, _ in CONFIGS}
        result["encoders"][encoder] = res
        print(f"  wands/{encoder}: {json.dumps(res['queries'])}", flush=True)
    return result


def read_bioes(path: Path) -> list[tuple[str, set[str]]]:
    """Sentences of a character-per-line BIOES file as (text, product-type (HC) entity strings)."""
    out: list[tuple[str, set[str]]] = []
    chars: list[str] = []
    tags: list[str] = []
    for line in [*path.read_text(encoding="utf-8").splitlines(), ""]:
        if line.strip():
            ch, tag = line.rsplit(None, 1) if len(line.split()) > 1 else (" ", line.strip())
            chars.append(ch)
            tags.append(tag)
            continue
        if chars:
            types, cur = set(), ""
            for ch, tag in zip(chars, tags, strict=True):
                if tag.endswith("-HC"):
                    cur += ch
                    if tag[0] in "ES":
                        types.add(cur.strip())
                        cur = ""
                else:
                    cur = ""
            out.append(("".join(chars), types))
        chars, tags = [], []
    return out


def zh_ner(work: Path, encoders: list[str], n_queries: int, seed: int) -> dict[str, Any]:
    """Chinese similar products: titles of the Chinese e-commerce NER set; relevant = shares a product-type entity."""
    rows = read_bioes(DATA / "zh" / "ner" / "train.txt.bieos")
    data = work / "zh_titles.jsonl"
    with open(data, "w", encoding="utf-8") as fh:
        for i, (text, _) in enumerate(rows):
            fh.write(json.dumps({"id": str(i), "title": text}, ensure_ascii=False) + "\n")
    gold = [types for _, types in rows]
    rng = random.Random(seed)
    q_rows = rng.sample([i for i, g in enumerate(gold) if g], min(n_queries, sum(1 for g in gold if g)))
    result: dict[str, Any] = {"products": len(rows), "queries": len(q_rows), "encoders": {}}

    def share(tops: list[list[int]]) -> float:
        return round(100 * float(np.mean([sum(bool(gold[r] & gold[q]) for r in top) / K for q, top in zip(q_rows, tops, strict=True)])), 2)  # fmt: skip

    from sklearn.feature_extraction.text import TfidfVectorizer

    vec = TfidfVectorizer(analyzer="char", ngram_range=(1, 2), sublinear_tf=True)
    docs = vec.fit_transform([t for t, _ in rows])
    sims = (docs[q_rows] @ docs.T).toarray()
    tops_tfidf = []
    for q, row in zip(q_rows, sims, strict=True):
        row[q] = -1
        tops_tfidf.append([int(r) for r in np.argsort(-row, kind="stable")[:K]])
    result["tfidf_char_1_2"] = share(tops_tfidf)
    for encoder in encoders:
        model = work / f"zh-{encoder}"
        res: dict[str, Any] = {"build": build(model, data, encoder)}
        index = SearchIndex.load(model)
        vectors = np.asarray(index.vectors, dtype=np.float32)
        tops: dict[str, list[list[int]]] = defaultdict(list)
        for q in q_rows:
            qterms = [t for t in index.terms[q].split("\t") if t]
            for name, rows_ in rank_all(index, index._bm25_scores(qterms), vectors @ vectors[q], q).items():
                tops[name].append(rows_)
        res["similar_share_product_type"] = {name: share(tops[name]) for name, _ in CONFIGS}
        result["encoders"][encoder] = res
        print(f"  zh/{encoder}: {json.dumps(res)}", flush=True)
    return result


def with_stages(work: Path, n_queries: int, seed: int) -> dict[str, Any]:
    """Does indexing the stages' predictions help? Categorize + predict_attributes are trained on 80 % of fashion
    (gold category and attributes), then the other 20 % is indexed from titles alone, once plain and once through
    the trained stages (predicted category and gender/colour/season/usage become terms and evidence)."""
    from shangpin.storage.catalog import product_to_input

    products = list(read_products(DATA / "fashion" / "styles.csv"))
    rng = random.Random(seed)
    order = list(range(len(products)))
    rng.shuffle(order)
    n_dev = len(products) // 5
    dev = [products[i] for i in sorted(order[:n_dev])]
    train = [products[i] for i in sorted(order[n_dev:])]
    model = work / "stages-model"
    train_file, dev_file = work / "stages_train.jsonl", work / "stages_dev_titles.jsonl"
    with open(train_file, "w", encoding="utf-8") as fh:
        for p in train:
            row = product_to_input(p)
            row.pop("image", None)
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    with open(dev_file, "w", encoding="utf-8") as fh:
        for p in dev:
            fh.write(json.dumps({"id": p.product_id, "title": p.title}, ensure_ascii=False) + "\n")
    result: dict[str, Any] = {"train": len(train), "dev_indexed": len(dev)}
    for task in ("categorize", "attributes"):
        wall, rss, _ = run_timed(
            [str(BIN / "shangpin"), "train", "--task", task, "--data", str(train_file), "--model", str(model)]
        )
        result[f"train_{task}_s"] = round(wall, 1)
        print(f"  trained {task} in {wall:.0f} s", flush=True)

    def attr(p: Any, name: str) -> str:
        v = p.attributes.get(name)
        return v.value if v is not None else ""

    gold = [((p.category_path or "").split(" > ")[-1], attr(p, "gender"), attr(p, "baseColour")) for p in dev]
    groups: dict[tuple[str, str, str], list[int]] = defaultdict(list)
    for row, g in enumerate(gold):
        groups[g].append(row)
    q_rows = random.Random(seed).sample(range(len(dev)), min(n_queries, len(dev)))
    triples = sorted(t for t, rows in groups.items() if len(rows) >= 5 and all(t))
    queries = [(f"{g} {c} {a}".lower(), (a, g, c)) for a, g, c in triples]
    result["similar_ceiling_strict"] = round(
        100 * float(np.mean([min(K, len(groups[gold[r]]) - 1) / K for r in q_rows])), 2
    )
    result["attribute_queries"] = len(queries)
    for name, folder in (("titles only", work / "stages-plain"), ("through the stages", model)):
        res: dict[str, Any] = {"build": build(folder, dev_file, "use")}
        index = SearchIndex.load(folder)
        vectors = np.asarray(index.vectors, dtype=np.float32)
        sim: dict[str, list[float]] = defaultdict(list)
        for q in q_rows:
            qterms = [t for t in index.terms[q].split("\t") if t]
            for cfg, rows in rank_all(index, index._bm25_scores(qterms), vectors @ vectors[q], q).items():
                sim[cfg].append(sum(gold[r] == gold[q] for r in rows) / K)
        nd: dict[str, list[float]] = defaultdict(list)
        qvecs = index.encoder.encode([q for q, _ in queries])
        for (q, triple), qv in zip(queries, qvecs, strict=True):
            qterms = list(dict.fromkeys(index_terms(q)))
            for cfg, rows in rank_all(index, index._bm25_scores(qterms), vectors @ qv, None).items():
                nd[cfg].append(ndcg([gold[r] == triple for r in rows], len(groups[triple])))
        res["similar_strict"] = {cfg: round(100 * float(np.mean(v)), 2) for cfg, v in sim.items()}
        res["attribute_queries_ndcg@10"] = {cfg: round(100 * float(np.mean(v)), 2) for cfg, v in nd.items()}
        result[name] = res
        print(f"  {name}: {json.dumps(res)}", flush=True)
    return result


class _RandomEncoder:
    """Stand-in sentence encoder for the scale run: random unit vectors, so the run times everything but encoding."""

    kind, dim = "use", 512

    def __init__(self) -> None:
        self.rng = np.random.default_rng(0)

    def encode(self, texts: list[str]) -> np.ndarray:
        v = self.rng.standard_normal((len(texts), self.dim), dtype=np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    def save(self, folder: Path) -> None:
        """Nothing to save."""


def scale_child(data: Path, model: Path) -> None:
    """Build an index with the stand-in encoder (run under /usr/bin/time by `scale`)."""
    import shangpin.search.build as build_module

    build_module.create_sentence_encoder = lambda kind, folder: _RandomEncoder()  # type: ignore[assignment,misc,return-value]
    t0 = time.perf_counter()
    meta = build_module.build_index(model, data)
    print(json.dumps({"size": meta["size"], "seconds": round(time.perf_counter() - t0, 1)}))


def scale(work: Path, n: int) -> dict[str, Any]:
    """Memory and time of everything but sentence encoding at `n` products (fashion titles repeated, unique ids),
    and query latency over an index of that size (real USE encoding of the query, random product vectors)."""
    titles = [p.title for p in read_products(DATA / "fashion" / "styles.csv")]
    data = work / f"scale_{n}.jsonl"
    with open(data, "w", encoding="utf-8") as fh:
        for i in range(n):
            fh.write(json.dumps({"id": f"p{i}", "title": titles[i % len(titles)]}) + "\n")
    model = work / f"scale-{n}"
    wall, rss, out = run_timed([sys.executable, __file__, "--scale-child", str(data), str(model)])
    info = json.loads(out.strip().splitlines()[-1])
    sizes = {f.name: f.stat().st_size for f in (model / "index").rglob("*") if f.is_file()}
    result: dict[str, Any] = {
        "products": info["size"],
        "build_wall_s": round(wall, 1),
        "products_per_s_without_encoding": round(info["size"] / wall, 1),
        "build_peak_rss_mib": rss,
        "index_mib": round(sum(sizes.values()) / 2**20, 1),
        "vectors_mib": round(sizes.get("vectors.npy", 0) / 2**20, 1),
    }
    print(f"  scale build: {json.dumps(result)}", flush=True)
    index = SearchIndex.load(model)
    queries = ["men navy blue shirts", "women black handbags", "kids sports shoes", "gold watch", "red dress"]
    result["latency"] = latency(index, queries * 4, list(range(0, n, max(1, n // 20)))[:20])
    wall, rss, _ = run_timed([str(BIN / "shangpin"), "similar", "--model", str(model), "p12345"])
    result["similar_command"] = {"wall_s": round(wall, 2), "peak_rss_mib": rss}
    wall, rss, _ = run_timed([str(BIN / "shangpin"), "search", "--model", str(model), "men navy blue shirts"])
    result["search_command"] = {"wall_s": round(wall, 2), "peak_rss_mib": rss}
    print(f"  scale: {json.dumps(result)}", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/searchbench"))
    parser.add_argument("--encoders", default="use,minilm")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--only", choices=["fashion", "wands", "zh", "stages", "scale"], default=None)
    parser.add_argument(
        "--limit", type=int, default=None, help="Fashion: first N products only (smoke runs)."
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out")
    parser.add_argument(
        "--scale", type=int, default=0, help="Also time an index of N products (stand-in vectors)."
    )
    parser.add_argument("--scale-child", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.scale_child:
        scale_child(*args.scale_child)
        return
    os.environ.setdefault("SHANGPIN_PROGRESS", "0")
    args.workdir.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    encoders = [e.strip() for e in args.encoders.split(",") if e.strip()]
    t0 = time.perf_counter()
    results: dict[str, Any] = {"command": " ".join(sys.argv), "cores": len(os.sched_getaffinity(0))}
    if args.only in (None, "fashion"):
        print("fashion", flush=True)
        results["fashion"] = fashion(args.workdir, encoders, args.queries, args.seed, args.limit)
    if args.only in (None, "wands"):
        print("WANDS queries on MWPD", flush=True)
        results["wands_mwpd"] = wands(args.workdir, encoders)
    if args.only in (None, "zh"):
        print("Chinese similar products (e-commerce NER titles)", flush=True)
        results["zh_ner"] = zh_ner(args.workdir, encoders, args.queries, args.seed)
    if args.only in (None, "stages"):
        print("fashion dev products indexed through trained stages", flush=True)
        results["stages"] = with_stages(args.workdir, args.queries, args.seed)
    if args.scale and args.only in (None, "scale"):
        print(f"scale: {args.scale} products", flush=True)
        results["scale"] = scale(args.workdir, args.scale)
    results["total_s"] = round(time.perf_counter() - t0, 1)
    out = args.out / f"search{'-' + args.only if args.only else ''}.json"
    out.write_text(json.dumps(results, indent=2, ensure_ascii=False), encoding="utf-8")
    print(f"written {out} ({results['total_s']} s)")


if __name__ == "__main__":
    main()
