"""Attribute values -> a canonical vocabulary: synonyms (learned and user-edited), case and spacing, units.

A shop sees "navy", "NAVY BLUE" and "Navy Blue" in its data and wants one facet value. The `Normalizer` maps a raw
value to its canonical form in this order, first hit wins:

1. the user's synonym file (``"navy" = "Navy Blue"``), per attribute or for all attributes;
2. a value with units ("128 gb", "6.5g") rewritten to the configured unit spelling and spacing;
3. the attribute's vocabulary, compared case-, space- and punctuation-insensitively (learned from training data
   and, when a taxonomy is given, the Shopify attribute values), giving the most frequent spelling seen.

A value that matches nothing is kept as it is (an open vocabulary is not an error); the original text value is
always kept beside the canonical one by the caller.

Synonym file (TOML; YAML with the same structure also works)::

    [synonyms."*"]          # every attribute
    "navy" = "Navy Blue"
    [synonyms.Color]        # only the attribute "Color"
    "off white" = "Cream"
    [units]                 # unit -> "attached" (128GB) or "spaced" (6.5 g); adds to the built-in table
    GB = "attached"
    g = "spaced"
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from shangpin.errors import ConfigError

# Unit spellings: lower-case alias -> (canonical unit, default style).
_UNITS: dict[str, tuple[str, str]] = {
    **{u.lower(): (u, "attached") for u in ("KB", "MB", "GB", "TB", "PB")},
    **{a: ("GB", "attached") for a in ("gig", "gigs", "gigabyte", "gigabytes")},
    **{a: ("TB", "attached") for a in ("terabyte", "terabytes")},
    "mg": ("mg", "spaced"),
    "g": ("g", "spaced"),
    "gr": ("g", "spaced"),
    "gram": ("g", "spaced"),
    "grams": ("g", "spaced"),
    "kg": ("kg", "spaced"),
    "kgs": ("kg", "spaced"),
    "lb": ("lb", "spaced"),
    "lbs": ("lb", "spaced"),
    "oz": ("oz", "spaced"),
    "ounce": ("oz", "spaced"),
    "ounces": ("oz", "spaced"),
    "fl oz": ("fl oz", "spaced"),
    "ml": ("ml", "spaced"),
    "l": ("L", "spaced"),
    "liter": ("L", "spaced"),
    "litre": ("L", "spaced"),
    "mm": ("mm", "spaced"),
    "cm": ("cm", "spaced"),
    "m": ("m", "spaced"),
    "in": ("in", "spaced"),
    "inch": ("in", "spaced"),
    "inches": ("in", "spaced"),
    "mah": ("mAh", "spaced"),
    "w": ("W", "spaced"),
    "v": ("V", "spaced"),
    "hz": ("Hz", "spaced"),
    "ghz": ("GHz", "spaced"),
    "mp": ("MP", "spaced"),
}
_NUMBER_UNIT = re.compile(r"^\s*(\d+(?:[.,]\d+)?)\s*([A-Za-z][A-Za-z ]{0,9}?)\.?\s*$")
# Separators and marks that never change what a value means; "+", "%", "&", "#" and a decimal point do
# ("SPF 100+" is not "SPF 100", "6.5 g" is not "65 g").
_KEY = re.compile(r"[\s\-_'’`´/\\,;:!?\"()\[\]{}®™©*|~]+|\.(?!\d)|(?<!\d)\.", re.UNICODE)


def value_key(value: str) -> str:
    """Case-, space- and separator-insensitive comparison key ("Navy-Blue" == "navy blue", "Brown/" == "brown")."""
    return _KEY.sub("", value.casefold())


class Normalizer:
    """Maps raw attribute values to canonical ones; see the module docstring for the order of the rules.

    Args:
        synonyms: attribute name (or "*" for all) -> raw value -> canonical value.
        units: canonical unit -> "attached" or "spaced", overriding the built-in style.
    """

    def __init__(
        self,
        synonyms: Mapping[str, Mapping[str, str]] | None = None,
        units: Mapping[str, str] | None = None,
    ) -> None:
        self.synonyms: dict[str, dict[str, str]] = {
            attr: {value_key(k): v for k, v in table.items()} for attr, table in (synonyms or {}).items()
        }
        self.units: dict[str, str] = {}
        for unit, style in (units or {}).items():
            if style not in ("attached", "spaced"):
                raise ConfigError(f"unit '{unit}': expected style 'attached' or 'spaced', found {style!r}")
            self.units[unit] = style
        # attribute -> value key -> canonical spelling (learned by `learn`)
        self.vocabulary: dict[str, dict[str, str]] = {}

    # ------------------------------------------------------------------ building
    @classmethod
    def from_file(cls, path: Path) -> Normalizer:
        """Read a synonym/unit file (TOML, or YAML for .yml/.yaml); errors name the file and what was expected."""
        data = read_config_file(path)
        unknown = set(data) - {"synonyms", "units"}
        if unknown:
            raise ConfigError(
                f"{path}: unknown sections {sorted(unknown)}; expected [synonyms.<attribute>], [units]"
            )
        synonyms = data.get("synonyms", {})
        if not isinstance(synonyms, dict) or not all(
            isinstance(t, dict) and all(isinstance(v, str) for v in t.values()) for t in synonyms.values()
        ):
            raise ConfigError(
                f'{path}: [synonyms.<attribute>] tables must map text to text, e.g. "navy" = "Navy Blue"'
            )
        units = data.get("units", {})
        if not isinstance(units, dict):
            raise ConfigError(f'{path}: [units] must map a unit to "attached" or "spaced"')
        try:
            return cls(synonyms, units)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None

    def learn(self, values: Iterable[tuple[str, str]]) -> Normalizer:
        """Learn each attribute's vocabulary from (attribute, value) pairs: the most frequent spelling of each
        comparison key becomes canonical ("NAVY BLUE" and "navy blue" -> "Navy Blue" when that is most common)."""
        counts: dict[str, Counter[str]] = defaultdict(Counter)
        for attr, value in values:
            value = value.strip()
            if value:
                counts[attr][self._synonym_or_unit(attr, value) or value] += 1
        for attr, counter in counts.items():
            table = self.vocabulary.setdefault(attr, {})
            best: dict[str, tuple[int, str]] = {}
            for value, n in counter.items():
                key = value_key(value)
                if key and (key not in best or (n, value) > best[key]):
                    best[key] = (n, value)
            for key, (_, value) in best.items():
                table.setdefault(key, value)
        return self

    def add_vocabulary(self, attr: str, values: Iterable[str]) -> None:
        """Add canonical values (e.g. Shopify attribute values); spellings learned from data are kept."""
        table = self.vocabulary.setdefault(attr, {})
        for value in values:
            if key := value_key(value):
                table.setdefault(key, value)

    # ------------------------------------------------------------------ applying
    def _synonym_or_unit(self, attr: str, value: str) -> str | None:
        key = value_key(value)
        for table in (self.synonyms.get(attr), self.synonyms.get("*")):
            if table and key in table:
                return table[key]
        return self._unit(value)

    def _unit(self, value: str) -> str | None:
        m = _NUMBER_UNIT.match(value)
        if not m:
            return None
        number, unit = m.group(1).replace(",", "."), m.group(2).strip()
        known = _UNITS.get(unit.lower())
        if known is None:
            if unit in self.units:
                known = (unit, self.units[unit])
            else:
                return None
        canonical, style = known
        style = self.units.get(canonical, style)
        return f"{number}{canonical}" if style == "attached" else f"{number} {canonical}"

    def canonical(self, attr: str, value: str) -> str:
        """The canonical form of `value` for attribute `attr` (the value itself, stripped, when nothing applies)."""
        value = value.strip()
        mapped = self._synonym_or_unit(attr, value)
        if mapped is not None:
            return mapped
        return self.vocabulary.get(attr, {}).get(value_key(value), value)

    def in_vocabulary(self, attr: str, value: str) -> bool:
        """Whether the canonical form of `value` is a known value of `attr`."""
        return value_key(self.canonical(attr, value)) in self.vocabulary.get(attr, {})

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict[str, Any]:
        return {
            "synonyms": self.synonyms,
            "units": self.units,
            "vocabulary": self.vocabulary,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Normalizer:
        norm = cls(units=data.get("units", {}))
        norm.synonyms = {a: dict(t) for a, t in data.get("synonyms", {}).items()}
        norm.vocabulary = {a: dict(t) for a, t in data.get("vocabulary", {}).items()}
        return norm


def read_config_file(path: Path) -> dict[str, Any]:
    """A TOML file, or YAML for .yml/.yaml, as a dict; ConfigError naming the file (and line) when unreadable."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"expected a file at {path}, found none")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".yml", ".yaml"):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    else:
        import tomllib

        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML ({exc}); use .yml/.yaml for YAML files") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a table/mapping at the top level, found {type(data).__name__}")
    return data
