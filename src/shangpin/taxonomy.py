"""Product taxonomies (Shopify, Google, Best Buy, plain path lists): id <-> path, ancestors, levels, attribute links.

`Taxonomy.load` detects the format from the content:

- Shopify ``dist/<locale>/categories.txt``: ``gid://shopify/TaxonomyCategory/<id> : A > B > C``;
- a Shopify taxonomy root directory (``dist/`` + ``data/``): the locale's categories.txt, plus the
  category -> attribute links of ``data/categories/*.yml`` and attribute display names from ``data/attributes.yml``
  (translated from ``dist/<locale>/attributes.txt`` where it has them);
- Google ``taxonomy-with-ids.<locale>.txt``: ``<id> - A > B > C``;
- Best Buy open-data ``categories.json`` (a list of ``{id, name, path: [{id, name}], subCategories}``);
- a text file of ``A > B > C`` paths, one per line (missing ancestors are added);
- a JSON file written by `Taxonomy.save` (what a model directory keeps).

What the data holds, and how it is handled:

- Shopify attribute links are *not* inherited down the tree. Each category in data/categories/*.yml lists its full
  attribute set, and 956 of the 10,595 categories (2025-08-unstable) deliberately drop one of their parent's
  attributes (e.g. "Boxing Shorts" drops "activity" from "Activewear"), so `attributes_for` returns exactly the yml
  list. The yml lists Shopify's ``friendly_id`` (``target_gender``), not the hyphenated API ``handle``
  (``target-gender``); both base and extended attributes appear there.
- Paths are unique in every English file, but the zh-CN Shopify file gives two pairs of categories the same path
  (Brake Pads / Brake Shoes -> "... > 刹车片", Drive Shafts / Propshafts -> "... > 传动轴"), and Best Buy 9
  (e.g. two "Name Brands > KitchenAid"). Formats with ids therefore accept repeated paths: such a path is "ambiguous", and looking it up
  raises a `DataError` naming the ids to use instead. In a plain path file a repeated path is an error.
- Best Buy: `subCategories` cross-links departments (556 links disagree with `path`), so the tree comes from `path`;
  139 ancestors appear only inside other categories' paths and are added; one "Test Pages" category has no name and
  is skipped with a warning.

Load times (best of 5 on the development machine): the full Shopify directory (10,595 categories, 26 category
ymls + attributes.yml) 0.77 s with PyYAML's libyaml `CSafeLoader` (0.06 s of it for categories.txt, 0.38 s for the
category ymls, 0.17 s for attributes.yml; about 4 s with the pure-Python loader); Google en-US (5,595 lines) 0.03 s;
Best Buy 0.05 s.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import re
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, get_args

from shangpin._util import atomic_write
from shangpin.errors import ConfigError, DataError

log = logging.getLogger(__name__)

SEP = " > "
"""Separator between the names of a category path."""

FORMAT = "shangpin.taxonomy"
FORMAT_VERSION = 1

Kind = Literal["shopify", "google", "bestbuy", "paths"]
"""Where a taxonomy's ids come from; ids only correspond between taxonomies of the same kind."""
LoadFormat = Literal["auto", "shopify", "google", "bestbuy", "paths", "saved"]

_SHOPIFY_GID = "gid://shopify/TaxonomyCategory/"
_SHOPIFY_LINE = re.compile(r"gid://shopify/TaxonomyCategory/(\S+)\s*:\s*(.*)")
_GOOGLE_LINE = re.compile(r"(\d+)\s+-\s+(.*)")
_HEADER_VERSION = re.compile(r"(?:Categories|Version)\s*:\s*(\S+)")
_TEXT_KINDS: dict[str, Kind] = {"shopify": "shopify", "google": "google", "paths": "paths"}
_LOCALE = re.compile(r"[a-z]{2}(?:[-_][A-Za-z]{2,4})?")
_GOOGLE_FILE_LOCALE = re.compile(r"taxonomy(?:-with-ids)?\.([a-z]{2}(?:-[A-Za-z]{2,4})?)\.")


def split_path(path: str) -> tuple[str, ...]:
    """The names of a path, whitespace around each stripped: "A>B >C" -> ("A", "B", "C")."""
    return tuple(name.strip() for name in path.split(">"))


def normalize_path(path: str) -> str:
    """The canonical spelling of a path ("A > B > C"), so paths from any source compare equal."""
    return SEP.join(split_path(path))


@dataclass(frozen=True, slots=True)
class Category:
    """One node of a taxonomy.

    Attributes:
        id: the source's id ("aa-1-13" for Shopify, "166" for Google); the path itself for plain path lists.
        name: the last name of the path.
        path: the full path "A > B > C".
        names: the names of the path, top first.
        parent: the parent's id; None at the top level.
        level: 1 for a top-level category.
        children: the children's ids, in file order.
        attributes: handles of the attributes that apply (Shopify); empty otherwise.
    """

    id: str
    name: str
    path: str
    names: tuple[str, ...]
    parent: str | None
    level: int
    children: tuple[str, ...]
    attributes: tuple[str, ...] = ()

    @property
    def is_leaf(self) -> bool:
        return not self.children


class Taxonomy:
    """A category tree with lookups by id or path; immutable once built.

    Build one with `load`, `from_paths` or `from_dict`; the constructor takes already linked categories.

    Args:
        categories: linked categories (parents and children consistent), in file order.
        name: a label for messages and model metadata, e.g. "Shopify 2025-08-unstable (en)".
        source: where it was loaded from (a path), or "" when built in memory.
        kind: which id scheme the ids follow (see `Kind`); `translate` only maps between equal kinds.
        locale: the language of the names, e.g. "en", "zh-CN", when known.
        version: the release named in the file header, e.g. "2021-09-21", when known.
        attribute_names: attribute handle -> display name.
    """

    def __init__(
        self,
        categories: Iterable[Category],
        *,
        name: str,
        source: str = "",
        kind: Kind = "paths",
        locale: str | None = None,
        version: str | None = None,
        attribute_names: Mapping[str, str] | None = None,
        attribute_values: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        self.name = name
        self.source = source
        self.kind: Kind = kind
        self.locale = locale
        self.version = version
        self._by_id: dict[str, Category] = {}
        ids_by_path: dict[str, list[str]] = {}
        for cat in categories:
            if cat.id in self._by_id:
                raise ValueError(f"duplicate category id {cat.id!r}")
            self._by_id[cat.id] = cat
            ids_by_path.setdefault(cat.path, []).append(cat.id)
        self._by_path = {path: ids[0] for path, ids in ids_by_path.items() if len(ids) == 1}
        self._ambiguous = {path: tuple(ids) for path, ids in ids_by_path.items() if len(ids) > 1}
        self._attribute_names = dict(attribute_names or {})
        self._attribute_values = {k: tuple(v) for k, v in (attribute_values or {}).items()}
        self._depth = max((cat.level for cat in self._by_id.values()), default=0)

    # -- construction -------------------------------------------------------------------------------------

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], *, locale: str | None = None, fmt: LoadFormat = "auto"
    ) -> Taxonomy:
        """Load a taxonomy file, or a Shopify taxonomy root directory.

        Args:
            path: a file in one of the formats in this module's docstring, or a Shopify root (with dist/ and data/).
            locale: for a Shopify directory, which dist/<locale> to read (default "en"); for a file, a label
                (guessed from the file name when not given).
            fmt: the file format; "auto" detects it from the content.
        """
        if fmt not in get_args(LoadFormat):
            raise ConfigError(f"unknown taxonomy format '{fmt}'; valid: {', '.join(get_args(LoadFormat))}")
        start = time.perf_counter()
        file = Path(path)
        if file.is_dir():
            if fmt not in ("auto", "shopify"):
                raise ConfigError(
                    f"{file}: is a directory; only a Shopify taxonomy root (dist/ + data/) loads from a directory, "
                    f"not fmt='{fmt}'; pass the taxonomy file instead"
                )
            taxonomy = _load_shopify_dir(file, locale or "en")
        elif not file.exists():
            raise DataError(
                f"{file}: no such file or directory; expected a taxonomy file (Shopify categories.txt, Google "
                "taxonomy-with-ids.<locale>.txt, Best Buy categories.json, one 'A > B > C' path per line, or a "
                "saved taxonomy .json) or a Shopify taxonomy directory"
            )
        else:
            taxonomy = _load_file(file, fmt, locale)
        log.debug("loaded %r in %.3f s", taxonomy, time.perf_counter() - start)
        return taxonomy

    @classmethod
    def from_paths(cls, paths: Iterable[str], *, name: str = "paths", source: str = "") -> Taxonomy:
        """A taxonomy of the given "A > B > C" paths (e.g. those found in training data) and all their ancestors.

        Repeats are ignored; each category's id is its normalized path; order is first appearance, each
        ancestor just before its first descendant.
        """
        entries: list[tuple[tuple[str, ...], str]] = []
        for i, path in enumerate(paths, 1):
            if not isinstance(path, str):
                raise TypeError(f"path #{i}: expected a str, got {type(path).__name__}")
            names = split_path(path)
            if not all(names):
                raise DataError(f"path #{i}: expected 'A > B > C' with non-empty names, found {path!r}")
            entries.append((names, f"path #{i}"))
        return cls(_link(_path_rows(entries, unique=False)), name=name, source=source, kind="paths")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str | None = None) -> Taxonomy:
        """Rebuild a taxonomy from `to_dict` output (e.g. read back from a model directory)."""
        where = source or "taxonomy dict"
        if not isinstance(data, Mapping) or data.get("format") != FORMAT:
            found = data.get("format") if isinstance(data, Mapping) else type(data).__name__
            raise DataError(
                f"{where}: expected a taxonomy written by Taxonomy.to_dict (format '{FORMAT}'), found {found!r}"
            )
        if data.get("format_version") != FORMAT_VERSION:
            raise DataError(
                f"{where}: written by taxonomy format v{data.get('format_version')}, this code reads "
                f"v{FORMAT_VERSION}; re-export it with this version of shangpin"
            )
        kind = data.get("kind", "paths")
        if kind not in get_args(Kind):
            raise DataError(f"{where}: unknown kind {kind!r}; expected one of {', '.join(get_args(Kind))}")
        attribute_names = data.get("attribute_names") or {}
        if not isinstance(attribute_names, Mapping):
            raise DataError(
                f"{where}: attribute_names: expected {{handle: name}}, found {_clip(repr(attribute_names))}"
            )
        attribute_values = data.get("attribute_values") or {}
        if not isinstance(attribute_values, Mapping) or not all(
            isinstance(v, list | tuple) for v in attribute_values.values()
        ):
            raise DataError(
                f"{where}: attribute_values: expected {{handle: [value, ...]}}, found {_clip(repr(attribute_values))}"
            )
        rows: list[_Row] = []
        for i, row in enumerate(data.get("categories") or (), 1):
            if not (
                isinstance(row, list | tuple)
                and len(row) in (3, 4)
                and isinstance(row[0], str)
                and isinstance(row[1], str)
                and isinstance(row[2], list | tuple)
                and (len(row) == 3 or isinstance(row[3], str))
            ):
                raise DataError(
                    f"{where}: category {i}: expected [id, path, attributes] or [id, path, attributes, parent_id], "
                    f"found {_clip(repr(row))}"
                )
            names = _checked_names(row[1], f"{where}: category {i}")
            parent = row[3] if len(row) == 4 else None
            rows.append(
                _Row(row[0], names, f"{where}: category {i}", tuple(map(str, row[2])), parent, len(row) == 4)
            )
        return cls(
            _link(rows, unique_paths=False),
            name=str(data.get("name", "taxonomy")),
            source=source if source is not None else str(data.get("source", "")),
            kind=kind,
            locale=data.get("locale"),
            version=data.get("version"),
            attribute_names=attribute_names,
            attribute_values=attribute_values,
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable form: categories as compact [id, path, attributes] rows in file order.

        A fourth element, the parent id, is added only where the parent's path is ambiguous (repeated).
        """
        rows: list[list[Any]] = []
        for cat in self:
            row: list[Any] = [cat.id, cat.path, list(cat.attributes)]
            if cat.parent is not None and SEP.join(cat.names[:-1]) in self._ambiguous:
                row.append(cat.parent)
            rows.append(row)
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "kind": self.kind,
            "locale": self.locale,
            "version": self.version,
            "source": self.source,
            "attribute_names": dict(self._attribute_names),
            "attribute_values": {k: list(v) for k, v in self._attribute_values.items()},
            "categories": rows,
        }

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write `to_dict` as JSON (atomically); `load` reads it back."""
        with atomic_write(Path(path)) as fh:
            json.dump(self.to_dict(), fh, ensure_ascii=False, separators=(",", ":"))

    # -- lookups ------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self) -> Iterator[Category]:
        """Categories in file order (parents first in all the published files)."""
        return iter(self._by_id.values())

    def __contains__(self, path_or_id: object) -> bool:
        if not isinstance(path_or_id, str | int):
            return False
        try:
            return self.find(path_or_id) is not None
        except DataError:  # an ambiguous path names categories, just not one
            return True

    def __repr__(self) -> str:
        return f"Taxonomy({self.name!r}, {len(self)} categories)"

    def find(self, path_or_id: str | int) -> Category | None:
        """The category with this id or path, or None.

        Accepts Shopify gids ("gid://shopify/TaxonomyCategory/aa-1") and int ids. Raises `DataError` when the
        path is shared by several categories (see the module docstring), since no one answer would be right.
        """
        key = str(path_or_id)
        cat = self._by_id.get(key)
        if cat is not None:
            return cat
        cid = self._by_path.get(key)
        if cid is None:
            if key.startswith(_SHOPIFY_GID):
                return self._by_id.get(key[len(_SHOPIFY_GID) :])
            key = normalize_path(key)
            cid = self._by_path.get(key)
            if cid is None:
                if key in self._ambiguous:
                    ids = ", ".join(self._ambiguous[key])
                    raise DataError(
                        f"category path '{key}' names {len(self._ambiguous[key])} categories in {self._describe()} "
                        f"(ids {ids}); use the id instead"
                    )
                return None
        return self._by_id[cid]

    def get(self, path_or_id: str | int) -> Category:
        """The category with this id or path; an unknown one raises `DataError` with the closest paths."""
        cat = self.find(path_or_id)
        if cat is None:
            key = str(path_or_id)
            matches = self.suggest(key)
            hint = f" Did you mean {_one_of(matches)}?" if matches else ""
            raise DataError(
                f"unknown category '{key}' in {self._describe()}.{hint} Use a path or id from this taxonomy "
                "(paths are case-sensitive, names separated by ' > '), or load the taxonomy the data was labelled with."
            )
        return cat

    def suggest(self, text: str, n: int = 3) -> list[str]:
        """Up to `n` category paths closest to `text`, ignoring case (for "did you mean" messages)."""
        query = normalize_path(text).lower()
        lowered = self._lower_paths
        out = [lowered[m] for m in difflib.get_close_matches(query, lowered, n=n, cutoff=0.6)]
        if len(out) < n:
            # A bare name ("sneakers") is far from every full path but close to the last name of one.
            by_name = self._lower_names
            for match in difflib.get_close_matches(split_path(query)[-1], by_name, n=n, cutoff=0.75):
                out.extend(p for p in by_name[match] if p not in out)
        return out[:n]

    def ancestors(self, path_or_id: str | int, *, include_self: bool = False) -> list[Category]:
        """The category's ancestors, top first (and then the category itself when `include_self`)."""
        cat = self.get(path_or_id)
        chain = [cat] if include_self else []
        while cat.parent is not None:
            cat = self._by_id[cat.parent]
            chain.append(cat)
        chain.reverse()
        return chain

    def parent(self, path_or_id: str | int) -> Category | None:
        """The parent category; None for a top-level one."""
        cat = self.get(path_or_id)
        return self._by_id[cat.parent] if cat.parent is not None else None

    def children(self, path_or_id: str | int) -> list[Category]:
        """The direct children, in file order."""
        return [self._by_id[cid] for cid in self.get(path_or_id).children]

    def roots(self) -> list[Category]:
        """The top-level categories."""
        return [cat for cat in self if cat.parent is None]

    def leaves(self) -> list[Category]:
        """The categories without children, in file order."""
        return [cat for cat in self if not cat.children]

    def is_leaf(self, path_or_id: str | int) -> bool:
        return not self.get(path_or_id).children

    def level(self, path_or_id: str | int) -> int:
        """1 for a top-level category."""
        return self.get(path_or_id).level

    @property
    def depth(self) -> int:
        """The deepest level (0 for an empty taxonomy)."""
        return self._depth

    @property
    def duplicate_paths(self) -> Mapping[str, tuple[str, ...]]:
        """Paths shared by several categories -> their ids (only formats with ids allow them)."""
        return MappingProxyType(self._ambiguous)

    def paths_at_level(self, level: int) -> list[str]:
        """The paths at this level, in file order (e.g. to evaluate at a coarser level)."""
        return [cat.path for cat in self if cat.level == level]

    def truncate(self, path_or_id: str | int, level: int) -> str:
        """The path of the category's ancestor at `level`; the category's own path if it is not deeper."""
        if level < 1:
            raise ValueError(f"level must be >= 1, got {level}")
        cat = self.get(path_or_id)
        return cat.path if level >= cat.level else SEP.join(cat.names[:level])

    def attributes_for(self, path_or_id: str | int) -> tuple[str, ...]:
        """Handles of the attributes that apply to the category (Shopify's links; empty for other sources)."""
        return self.get(path_or_id).attributes

    def attribute_name(self, handle: str) -> str:
        """The display name of an attribute handle ("target_gender" -> "Target gender"); the handle if unknown."""
        return self._attribute_names.get(handle, handle)

    def attribute_values(self, handle: str) -> tuple[str, ...]:
        """The values of an attribute ("color" -> ("Beige", "Black", ...)); empty when unknown (Shopify only)."""
        return self._attribute_values.get(handle, ())

    def attribute_handle(self, name: str) -> str | None:
        """The handle of an attribute given by handle or display name, compared ignoring case, spaces and
        punctuation ("Color", "color", "Target gender" -> "target_gender"); None when the taxonomy has none."""
        key = _attribute_key(name)
        for handle, display in self._attribute_names.items():
            if key in (_attribute_key(handle), _attribute_key(display)):
                return handle
        return None

    @property
    def attribute_names(self) -> Mapping[str, str]:
        """Attribute handle -> display name (Shopify directory only)."""
        return MappingProxyType(self._attribute_names)

    def translate(self, path_or_id: str | int, other: Taxonomy) -> Category:
        """The same category (same id) in `other`, e.g. Shopify en -> zh-CN, or Google en-US -> zh-CN.

        Raises `DataError` when `other` uses another id scheme or lacks the id (an older or newer release).
        """
        cat = self.get(path_or_id)
        if other.kind != self.kind:
            raise DataError(
                f"cannot translate from {self._describe()} to {other._describe()}: {self.kind} and {other.kind} "
                "ids do not correspond; translate only between locales of the same taxonomy"
            )
        found = other._by_id.get(cat.id)
        if found is None:
            raise DataError(
                f"category '{cat.path}' (id {cat.id}) of {self._describe()} is not in {other._describe()}; the two "
                "are probably different releases: use files from the same release"
            )
        return found

    # -- helpers ------------------------------------------------------------------------------------------

    def _describe(self) -> str:
        where = f" from {self.source}" if self.source else ""
        return f"taxonomy '{self.name}' ({len(self):,} categories{where})"

    @cached_property
    def _lower_paths(self) -> dict[str, str]:
        lowered: dict[str, str] = {}
        for cat in self:
            lowered.setdefault(cat.path.lower(), cat.path)
        return lowered

    @cached_property
    def _lower_names(self) -> dict[str, list[str]]:
        by_name: dict[str, list[str]] = {}
        for cat in self:
            by_name.setdefault(cat.name.lower(), []).append(cat.path)
        return by_name


# -- building -----------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Row:
    """A category as read, before parents and children are linked."""

    id: str
    names: tuple[str, ...]
    where: str  # "file:line" for messages
    attributes: tuple[str, ...] = ()
    parent: str | None = None
    parent_given: bool = False  # else the parent is found by path


def _link(rows: Sequence[_Row], *, unique_paths: bool = True) -> list[Category]:
    """Check ids (and paths) are unique, find each parent, and build the categories."""
    index: dict[str, int] = {}
    by_path: dict[tuple[str, ...], list[int]] = {}
    for i, row in enumerate(rows):
        if row.id in index:
            raise DataError(
                f"{row.where}: duplicate category id '{row.id}' (first at {rows[index[row.id]].where}); "
                "ids must be unique: remove or renumber one of them"
            )
        index[row.id] = i
        same = by_path.setdefault(row.names, [])
        if same and unique_paths:
            raise DataError(
                f"{row.where}: duplicate category path '{SEP.join(row.names)}' (first at {rows[same[0]].where}); "
                "each path may appear once: remove the repeated line"
            )
        same.append(i)

    parents: list[str | None] = []
    children: dict[str, list[str]] = {}
    for i, row in enumerate(rows):
        parent: str | None
        if row.parent_given:
            parent = row.parent
            if parent is not None and (parent not in index or rows[index[parent]].names != row.names[:-1]):
                raise DataError(
                    f"{row.where}: parent '{parent}' of '{SEP.join(row.names)}' is missing or has another path; "
                    "fix the parent id"
                )
            if parent is None and len(row.names) > 1:
                raise DataError(f"{row.where}: '{SEP.join(row.names)}' has no parent id; give one")
        elif len(row.names) == 1:
            parent = None
        else:
            candidates = by_path.get(row.names[:-1])
            if not candidates:
                raise DataError(
                    f"{row.where}: the parent '{SEP.join(row.names[:-1])}' of '{SEP.join(row.names)}' is not in "
                    "the taxonomy; the file must list every ancestor"
                )
            # A repeated parent path (zh-CN Shopify) is resolved as files are written: depth first, so the
            # parent is the nearest category with that path above this line.
            before = [c for c in candidates if c < i]
            parent = rows[before[-1] if before else candidates[0]].id
        parents.append(parent)
        if parent is not None:
            children.setdefault(parent, []).append(row.id)

    return [
        Category(
            id=row.id,
            name=row.names[-1],
            path=SEP.join(row.names),
            names=row.names,
            parent=parents[i],
            level=len(row.names),
            children=tuple(children.get(row.id, ())),
            attributes=row.attributes,
        )
        for i, row in enumerate(rows)
    ]


def _path_rows(entries: Iterable[tuple[tuple[str, ...], str]], *, unique: bool) -> list[_Row]:
    """Rows for paths that are their own ids, with missing ancestors added before their first descendant."""
    rows: list[_Row] = []
    explicit: dict[tuple[str, ...], str] = {}
    present: set[tuple[str, ...]] = set()
    for names, where in entries:
        if names in explicit:
            if unique:
                raise DataError(
                    f"{where}: duplicate category path '{SEP.join(names)}' (first at {explicit[names]}); "
                    "each path may appear once: remove the repeated line"
                )
            continue
        explicit[names] = where
        for k in range(1, len(names) + 1):
            prefix = names[:k]
            if prefix not in present:
                present.add(prefix)
                rows.append(_Row(SEP.join(prefix), prefix, where))
    return rows


def _checked_names(path: str, where: str) -> tuple[str, ...]:
    names = split_path(path)
    if not all(names):
        raise DataError(
            f"{where}: expected a path of non-empty names separated by ' > ', found '{_clip(path)}'"
        )
    return names


def _one_of(items: Sequence[str]) -> str:
    quoted = [f"'{item}'" for item in items]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"


def _clip(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _label(kind: Kind, version: str | None, locale: str | None, fallback: str) -> str:
    base = {"shopify": "Shopify", "google": "Google", "bestbuy": "Best Buy", "paths": fallback}[kind]
    if version:
        base += f" {version}"
    return f"{base} ({locale})" if locale else base


# -- file formats -------------------------------------------------------------------------------------------


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc}); convert the file to UTF-8") from None


def _detect(path: Path, text: str) -> LoadFormat:
    if path.suffix.lower() == ".json" or text.lstrip().startswith(("[", "{")):
        return "saved" if text.lstrip().startswith("{") else "bestbuy"
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("gid://"):
            if not line.startswith(_SHOPIFY_GID):
                raise DataError(
                    f"{path}: this looks like a Shopify attribute or value file ('{_clip(line, 60)}'); "
                    "expected dist/<locale>/categories.txt or the taxonomy root directory"
                )
            return "shopify"
        return "google" if _GOOGLE_LINE.fullmatch(line) else "paths"
    return "paths"


def _load_file(path: Path, fmt: LoadFormat, locale: str | None) -> Taxonomy:
    text = _read_text(path)
    if fmt == "auto":
        fmt = _detect(path, text)
    if fmt in ("saved", "bestbuy"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{path}: invalid JSON ({exc}); expected a saved taxonomy or Best Buy categories.json"
            ) from None
        if fmt == "saved":
            return Taxonomy.from_dict(data, source=str(path))
        return Taxonomy(
            _link(_bestbuy_rows(path, data), unique_paths=False),
            name=_label("bestbuy", None, locale, ""),
            source=str(path),
            kind="bestbuy",
            locale=locale,
        )

    kind = _TEXT_KINDS[fmt]
    rows, version = _text_rows(path, text, kind)
    if not rows:
        raise DataError(f"{path}: no categories found; expected one category per line (# starts a comment)")
    if locale is None:
        locale = _guess_locale(path, kind)
    return Taxonomy(
        _link(rows, unique_paths=kind == "paths"),
        name=_label(kind, version, locale, path.name),
        source=str(path),
        kind=kind,
        locale=locale,
        version=version,
    )


def _guess_locale(path: Path, kind: Kind) -> str | None:
    if kind == "shopify" and _LOCALE.fullmatch(path.parent.name):
        return path.parent.name  # dist/<locale>/categories.txt
    if kind == "google" and (m := _GOOGLE_FILE_LOCALE.search(path.name)):
        return m.group(1)
    return None


def _text_rows(path: Path, text: str, kind: Kind) -> tuple[list[_Row], str | None]:
    """Rows of a line-based file, and the release named in its header comment."""
    if kind == "paths":
        entries: list[tuple[tuple[str, ...], str]] = []
        for lineno, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if line and not line.startswith("#"):
                entries.append((_checked_names(line, f"{path}:{lineno}"), f"{path}:{lineno}"))
        return _path_rows(entries, unique=True), None

    pattern, expected = {
        "shopify": (_SHOPIFY_LINE, "'gid://shopify/TaxonomyCategory/<id> : A > B > C'"),
        "google": (_GOOGLE_LINE, "'<id> - A > B > C'"),
    }[kind]
    rows: list[_Row] = []
    version: str | None = None
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            if version is None and not rows and (m := _HEADER_VERSION.search(line)):
                version = m.group(1)
            continue
        where = f"{path}:{lineno}"
        match = pattern.fullmatch(line)
        if match is None:
            raise DataError(f"{where}: expected {expected} ({kind} format), found '{_clip(line)}'")
        rows.append(_Row(match.group(1), _checked_names(match.group(2), where), where))
    return rows, version


def _bestbuy_rows(path: Path, data: Any) -> list[_Row]:
    """Rows from Best Buy's categories.json; the tree comes from each `path` (see the module docstring)."""
    if not isinstance(data, list):
        raise DataError(
            f"{path}: expected a list of Best Buy categories ({{id, name, path}}), found {type(data).__name__}"
        )
    chains: list[tuple[list[tuple[str, Any]], str]] = []
    unnamed: list[str] = []
    for i, item in enumerate(data, 1):
        where = f"{path}: item {i}"
        try:
            chain = [(str(step["id"]), step["name"]) for step in item["path"]]
            cid = str(item["id"])
        except (TypeError, KeyError):
            raise DataError(
                f"{where}: expected {{id, name, path: [{{id, name}}, ...]}}, found {_clip(json.dumps(item))}"
            ) from None
        if not chain or chain[-1][0] != cid:
            raise DataError(f"{where}: the path of '{cid}' must end with the category itself; fix the path")
        if any(not isinstance(name, str) or not name.strip() for _, name in chain):
            unnamed.append(cid)
            continue
        if any(">" in name for _, name in chain):
            raise DataError(
                f"{where}: a name in the path of '{cid}' contains '>', the path separator; rename it"
            )
        chains.append((chain, where))
    if unnamed:
        log.warning(
            "%s: skipped categories with an empty name in their path: %d (ids %s)",
            path,
            len(unnamed),
            ", ".join(unnamed[:5]),
        )

    # Emit each category once, after its ancestors (the file lists 703 categories before their parent).
    where_of = {chain[-1][0]: where for chain, where in chains}
    rows: list[_Row] = []
    emitted: set[str] = set()
    for chain, where in chains:
        names = tuple(name.strip() for _, name in chain)
        for k, (cid, _) in enumerate(chain):
            if cid not in emitted:
                emitted.add(cid)
                parent = chain[k - 1][0] if k else None
                # An ancestor not listed on its own (139 of them) is placed where it is first mentioned.
                rows.append(
                    _Row(cid, names[: k + 1], where_of.get(cid, where), parent=parent, parent_given=True)
                )
    return rows


# -- Shopify directory --------------------------------------------------------------------------------------


def _load_shopify_dir(root: Path, locale: str) -> Taxonomy:
    dist = root / "dist"
    file = dist / locale / "categories.txt"
    if not file.is_file():
        available = (
            sorted(d.name for d in dist.iterdir() if (d / "categories.txt").is_file())
            if dist.is_dir()
            else []
        )
        if not available:
            raise DataError(
                f"{root}: not a Shopify taxonomy directory; expected dist/<locale>/categories.txt "
                "(and data/categories/*.yml for attribute links), or pass a taxonomy file"
            )
        raise DataError(f"{root}: no categories for locale '{locale}'; available: {', '.join(available)}")
    rows, version = _text_rows(file, _read_text(file), "shopify")

    links_dir = root / "data" / "categories"
    attribute_names: dict[str, str] = {}
    if links_dir.is_dir():
        links = _read_category_links(links_dir)
        ids = {row.id for row in rows}
        missing = [row.id for row in rows if row.id not in links]
        extra = [cid for cid in links if cid not in ids]
        if missing or extra:
            raise DataError(
                f"{root}: dist/{locale}/categories.txt and data/categories/*.yml disagree: {len(missing)} "
                f"categories have no yml entry (e.g. {missing[:3]}), {len(extra)} yml ids are not in "
                f"categories.txt (e.g. {extra[:3]}); use dist/ and data/ from the same taxonomy release"
            )
        for row in rows:
            row.attributes = links[row.id]
        attribute_names, attribute_values = _read_attribute_names(root, locale)
    else:
        log.info("%s: no data/categories/*.yml, so no category -> attribute links", root)

    return Taxonomy(
        _link(rows, unique_paths=False),
        name=_label("shopify", version, locale, ""),
        source=str(root),
        kind="shopify",
        locale=locale,
        version=version,
        attribute_names=attribute_names,
        attribute_values=attribute_values,
    )


def _yaml() -> tuple[Any, Any]:
    try:
        import yaml
    except ImportError:
        raise ConfigError(
            "reading Shopify's data/*.yml needs PyYAML: 'pip install pyyaml', or load "
            "dist/<locale>/categories.txt alone (without attribute links)"
        ) from None
    # libyaml's loader is ~8x faster than the pure-Python one (0.38 s vs 2.9 s for the category files).
    return yaml, getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _load_yaml(path: Path) -> Any:
    yaml, loader = _yaml()
    try:
        with open(path, "rb") as fh:
            return yaml.load(fh, Loader=loader)
    except yaml.YAMLError as exc:
        raise DataError(f"{path}: invalid YAML ({exc}); re-copy the file from the taxonomy release") from None


def _read_category_links(folder: Path) -> dict[str, tuple[str, ...]]:
    """Category id -> its attribute handles, from data/categories/*.yml."""
    links: dict[str, tuple[str, ...]] = {}
    seen_in: dict[str, Path] = {}
    for file in sorted(folder.glob("*.yml")):
        items = _load_yaml(file)
        if not isinstance(items, list):
            raise DataError(
                f"{file}: expected a list of {{id, name, children, attributes}}, found {type(items).__name__}"
            )
        for i, item in enumerate(items, 1):
            if not (
                isinstance(item, dict)
                and isinstance(item.get("id"), str)
                and isinstance(item.get("attributes") or [], list)
            ):
                raise DataError(
                    f"{file}: item {i}: expected {{id, name, children, attributes}}, found {_clip(repr(item))}"
                )
            cid = item["id"]
            if cid in links:
                raise DataError(
                    f"{file}: item {i}: category '{cid}' is also listed in {seen_in[cid]}; remove one"
                )
            links[cid] = tuple(str(a) for a in item.get("attributes") or ())
            seen_in[cid] = file
    return links


def _read_attribute_names(root: Path, locale: str) -> tuple[dict[str, str], dict[str, tuple[str, ...]]]:
    """(attribute handle (friendly_id) -> display name, in `locale` where dist/<locale>/attributes.txt has it;
    attribute handle -> its value names (English, from data/values.yml))."""
    file = root / "data" / "attributes.yml"
    if not file.is_file():
        return {}, {}
    doc = _load_yaml(file)
    if not isinstance(doc, dict):
        raise DataError(
            f"{file}: expected base_attributes and extended_attributes, found {type(doc).__name__}"
        )
    names: dict[str, str] = {}
    value_handles: dict[str, list[str]] = {}
    numeric_ids: dict[str, str] = {}
    for section in ("base_attributes", "extended_attributes"):
        for item in doc.get(section) or ():
            if (
                isinstance(item, dict)
                and isinstance(item.get("friendly_id"), str)
                and isinstance(item.get("name"), str)
            ):
                names[item["friendly_id"]] = item["name"]
                value_handles[item["friendly_id"]] = [str(v) for v in item.get("values") or ()]
                if "id" in item:  # only base attributes have gids, so only they are translated
                    numeric_ids[item["friendly_id"]] = str(item["id"])
    local = root / "dist" / locale / "attributes.txt"
    if locale != "en" and local.is_file():
        translated: dict[str, str] = {}
        for line in _read_text(local).splitlines():
            if m := re.fullmatch(r"gid://shopify/TaxonomyAttribute/(\d+)\s*:\s*(.*\S)\s*", line):
                translated[m.group(1)] = m.group(2)
        for handle, aid in numeric_ids.items():
            if aid in translated:
                names[handle] = translated[aid]
    values_file = root / "data" / "values.yml"
    value_names = _read_value_names(values_file) if values_file.is_file() else {}
    values = {
        handle: tuple(value_names[v] for v in handles if v in value_names)
        for handle, handles in value_handles.items()
        if handles
    }
    return names, values


def _attribute_key(name: str) -> str:
    return re.sub(r"[\W_]+", "", name.casefold())


def _read_value_names(file: Path) -> dict[str, str]:
    """Value handle -> name from Shopify's data/values.yml.

    The file is a flat list of ``- id / name / friendly_id / handle`` entries; reading those lines directly takes
    about 0.05 s where PyYAML's C loader needs 2.1 s. Anything else in the file falls back to the YAML parser.
    """
    names: dict[str, str] = {}
    name: str | None = None
    for line in _read_text(file).splitlines():
        if line.startswith("  name: "):
            raw = line[8:].strip()
            name = str(_load_scalar(raw)) if raw[:1] in "'\"" else raw
        elif line.startswith(("  friendly_id: ", "  handle: ")) and name is not None:
            names[line.split(": ", 1)[1].strip()] = name
        elif not (line.startswith("- id: ") or line.strip() in ("", "---")):
            names = {}
            for item in _load_yaml(file) or ():
                if isinstance(item, dict) and isinstance(item.get("name"), str):
                    for key in ("friendly_id", "handle"):
                        if isinstance(item.get(key), str):
                            names[item[key]] = item["name"]
            return names
    return names


def _load_scalar(raw: str) -> Any:
    yaml, loader = _yaml()
    return yaml.load(raw, Loader=loader)
