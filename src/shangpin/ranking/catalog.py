"""The catalog as the ranker sees it: products -> category node and coded attribute values.

Attribute values are compared as codes (one vocabulary per attribute), so a session's revealed preferences and
a candidate's values meet in integer lookups: ranking 100 candidates stays well under a millisecond of feature
work. Numeric attributes with many distinct values (price, weight) are cut into quantile bins, because a
shopper prefers a price range, not one exact price.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shangpin.errors import DataError
from shangpin.records import Product

NUMERIC_MIN_DISTINCT = 12
"""A numeric attribute with more distinct values than this is binned."""
NUMERIC_BINS = 5
MISSING = -1
"""Code of a product that has no value for an attribute."""

_NUMBER = re.compile(r"^\s*[-+]?\d+(?:[.,]\d+)?\s*$")


def ancestors(path: str) -> list[str]:
    """Every level of a category path, top first: "A > B > C" -> ["A", "A > B", "A > B > C"]."""
    parts = [p.strip() for p in path.split(">") if p.strip()]
    return [" > ".join(parts[: i + 1]) for i in range(len(parts))]


@dataclass
class RankCatalog:
    """Products with their category node and attribute value codes.

    Attributes:
        ids: product ids, row order of `codes`.
        leaf: node index of each product's own category path.
        codes: (n_products, n_attributes) value codes, MISSING where a product lacks the attribute.
        attributes: attribute names (columns of `codes`).
        vocab: per attribute, the value strings by code (bins read "lo–hi").
        bins: per numeric attribute, the inner bin edges.
        nodes: every category node path (each level of every product's path).
        parent: parent node index per node, -1 for top-level nodes.
        node_attributes: per node, the attribute indices its products carry often enough to rank on.
    """

    ids: list[str]
    leaf: np.ndarray
    codes: np.ndarray
    attributes: list[str]
    vocab: list[list[str]]
    bins: dict[int, list[float]]
    nodes: list[str]
    parent: list[int]
    node_attributes: list[list[int]]
    _index: dict[str, int] = field(default_factory=dict, repr=False)
    _node_index: dict[str, int] = field(default_factory=dict, repr=False)
    _value_index: list[dict[str, int]] = field(default_factory=list, repr=False)
    _leaf_rows: dict[int, np.ndarray] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._index = {pid: i for i, pid in enumerate(self.ids)}
        self._node_index = {n: i for i, n in enumerate(self.nodes)}
        self._value_index = [{v.casefold(): c for c, v in enumerate(vals)} for vals in self.vocab]

    def __len__(self) -> int:
        return len(self.ids)

    def row(self, product_id: str) -> int | None:
        """The row of a product id, None when the catalog does not know it."""
        return self._index.get(product_id)

    def node(self, path: str) -> int | None:
        """The node index of a category path, None when unknown."""
        return self._node_index.get(path)

    def resolve(self, path: str | None) -> int | None:
        """The deepest known node on `path` (a child the catalog never saw backs off to its parent)."""
        if not path:
            return None
        for level in reversed(ancestors(path)):
            index = self._node_index.get(level)
            if index is not None:
                return index
        return None

    def lineage(self, node: int) -> list[int]:
        """The node and its ancestors, the node itself first."""
        out = [node]
        while self.parent[out[-1]] >= 0:
            out.append(self.parent[out[-1]])
        return out

    def rows_in_leaf(self, leaf: int) -> np.ndarray:
        """Rows of the products whose own category is node `leaf` (cached)."""
        rows = self._leaf_rows.get(leaf)
        if rows is None:
            rows = self._leaf_rows[leaf] = np.flatnonzero(self.leaf == leaf)
        return rows

    def value_code(self, attribute: int, value: str) -> int:
        """The code of a value string of an attribute, MISSING when unseen."""
        return self._value_index[attribute].get(value.casefold(), MISSING)

    def depth(self, node: int) -> int:
        return len(self.lineage(node)) - 1

    # -- persistence -------------------------------------------------------------------------------------------
    def to_arrays(self) -> dict[str, np.ndarray]:
        """Arrays for `np.savez`; strings are fixed-width unicode so loading needs no pickle."""
        return {"ids": np.array(self.ids, dtype=str), "leaf": self.leaf, "codes": self.codes}

    def to_json(self) -> dict[str, Any]:
        return {
            "attributes": self.attributes,
            "vocab": self.vocab,
            "bins": {str(k): v for k, v in self.bins.items()},
            "nodes": self.nodes,
            "parent": self.parent,
            "node_attributes": self.node_attributes,
        }

    @classmethod
    def from_saved(cls, arrays: Any, meta: dict[str, Any]) -> RankCatalog:
        return cls(
            ids=[str(x) for x in arrays["ids"]],
            leaf=np.asarray(arrays["leaf"], dtype=np.int32),
            codes=np.asarray(arrays["codes"], dtype=np.int32),
            attributes=list(meta["attributes"]),
            vocab=[list(v) for v in meta["vocab"]],
            bins={int(k): list(v) for k, v in meta["bins"].items()},
            nodes=list(meta["nodes"]),
            parent=[int(p) for p in meta["parent"]],
            node_attributes=[list(a) for a in meta["node_attributes"]],
        )


def build_catalog(
    products: Iterable[Product], *, min_coverage: float = 0.2, source: str | Path = "catalog"
) -> RankCatalog:
    """Index products for ranking.

    Every product needs a category; its attributes are the values given with it (a None value, "known
    absent", counts as missing). An attribute belongs to a node when at least `min_coverage` of the node's
    products carry it.

    Raises:
        DataError: a product has no category, or no product has any attribute.
    """
    ids: list[str] = []
    paths: list[str] = []
    raw: list[dict[str, str]] = []
    for product in products:
        path = product.category_path
        if not path:
            raise DataError(
                f'{source}: product {product.product_id!r} has no "category"; ranking needs a category path '
                'like "Apparel > Topwear > Tshirts" on every catalog product. Add it, or drop the product.'
            )
        ids.append(product.product_id)
        paths.append(path)
        raw.append({k: v.value for k, v in product.attributes.items() if v is not None and v.value.strip()})
    names = sorted({name for values in raw for name in values})
    if not names:
        raise DataError(
            f'{source}: none of the {len(ids)} products has "attributes"; attribute importance needs products '
            'with values like {"attributes": {"colour": "Red", "size": "M"}}.'
        )
    col = {n: i for i, n in enumerate(names)}
    bins = _numeric_bins(raw, names)
    vocab: list[list[str]] = [[] for _ in names]
    value_index: list[dict[str, int]] = [{} for _ in names]
    codes = np.full((len(ids), len(names)), MISSING, dtype=np.int32)
    for row, values in enumerate(raw):
        for name, value in values.items():
            a = col[name]
            text = _bin_label(float(value.replace(",", ".")), bins[a]) if a in bins else value.strip()
            key = text.casefold()
            code = value_index[a].get(key)
            if code is None:
                code = value_index[a][key] = len(vocab[a])
                vocab[a].append(text)
            codes[row, a] = code

    nodes: list[str] = []
    node_index: dict[str, int] = {}
    parent: list[int] = []
    leaf = np.empty(len(ids), dtype=np.int32)
    for row, path in enumerate(paths):
        previous = -1
        for level in ancestors(path):
            index = node_index.get(level)
            if index is None:
                index = node_index[level] = len(nodes)
                nodes.append(level)
                parent.append(previous)
            previous = index
        leaf[row] = previous

    node_attributes = _node_attributes(leaf, parent, codes, len(nodes), min_coverage)
    return RankCatalog(ids, leaf, codes, names, vocab, bins, nodes, parent, node_attributes)


def _node_attributes(
    leaf: np.ndarray, parent: Sequence[int], codes: np.ndarray, n_nodes: int, min_coverage: float
) -> list[list[int]]:
    present = (codes != MISSING).astype(np.int64)
    totals = np.zeros((n_nodes, codes.shape[1]), dtype=np.int64)
    sizes = np.zeros(n_nodes, dtype=np.int64)
    np.add.at(totals, leaf, present)
    np.add.at(sizes, leaf, 1)
    # Children come after their parents in `nodes`, so one backwards pass rolls counts up the tree.
    for node in range(n_nodes - 1, -1, -1):
        if parent[node] >= 0:
            totals[parent[node]] += totals[node]
            sizes[parent[node]] += sizes[node]
    out: list[list[int]] = []
    for node in range(n_nodes):
        share = totals[node] / max(int(sizes[node]), 1)
        out.append([int(a) for a in np.flatnonzero((share >= min_coverage) & (totals[node] > 0))])
    return out


def _numeric_bins(raw: Sequence[dict[str, str]], names: Sequence[str]) -> dict[int, list[float]]:
    bins: dict[int, list[float]] = {}
    for a, name in enumerate(names):
        values = [v for r in raw if (v := r.get(name)) is not None]
        if not values or not all(_NUMBER.match(v) for v in values):
            continue
        numbers = np.array([float(v.replace(",", ".")) for v in values])
        if len(Counter(numbers.tolist())) <= NUMERIC_MIN_DISTINCT:
            continue
        edges = np.unique(np.quantile(numbers, np.linspace(0, 1, NUMERIC_BINS + 1)[1:-1]))
        bins[a] = [float(e) for e in edges]
    return bins


def _bin_label(x: float, edges: Sequence[float]) -> str:
    k = int(np.searchsorted(np.asarray(edges), x, side="right"))
    lo = f"{edges[k - 1]:g}" if k > 0 else ""
    hi = f"{edges[k]:g}" if k < len(edges) else ""
    return f"<{hi}" if not lo else (f">={lo}" if not hi else f"{lo}-{hi}")
