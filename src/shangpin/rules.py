"""Business rules per category, applied after the models (the seed's 业务规则融合).

A rules file (TOML, or YAML with the same structure) lists rules; each names the attribute it checks and the
category it applies to (that category and everything under it; "*" or no category = every product)::

    [[rule]]
    category = "Apparel & Accessories > Clothing"
    attribute = "season"
    allowed = ["Summer", "Winter", "Fall", "Spring"]   # other values violate the rule
    exclusive = [["Summer", "Winter"]]                 # not together (multi-valued attributes)
    required = true                                    # a product of the category must have a value ...
    default = "Fall"                                   # ... and gets this one when no model found any
    action = "reject"                                  # or "lower": multiply the score by `penalty`
    penalty = 0.5

    [[rule]]
    attribute = "storage"
    pattern = '^\\d+(GB|TB)$'                          # the canonical value must match (re.fullmatch)

What a violation does: with `action = "reject"` (default) a predicted value is replaced by the model's best value
that passes (when there is one) and otherwise rejected; a value read from the text is never replaced, only
rejected. With `action = "lower"` the value stays and its score is multiplied by `penalty`. Either way the
output carries the reason in `rule`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from shangpin.errors import ConfigError
from shangpin.normalize import read_config_file, value_key

Action = Literal["reject", "lower"]
_KEYS = {
    "category",
    "attribute",
    "allowed",
    "pattern",
    "exclusive",
    "required",
    "default",
    "action",
    "penalty",
}


@dataclass(frozen=True)
class Rule:
    """One rule; see the module docstring."""

    attribute: str
    category: str = "*"
    allowed: tuple[str, ...] | None = None
    pattern: str | None = None
    exclusive: tuple[tuple[str, ...], ...] = ()
    required: bool = False
    default: str | None = None
    action: Action = "reject"
    penalty: float = 0.5

    def applies_to(self, category: str | None) -> bool:
        """Whether the rule covers a product of `category` (its own category or any below it)."""
        if self.category in ("*", ""):
            return True
        if not category:
            return False
        return category == self.category or category.startswith(self.category + " > ")

    def violation(self, value: str) -> str | None:
        """Why a single value breaks the rule, or None."""
        if self.allowed is not None and value_key(value) not in {value_key(a) for a in self.allowed}:
            shown = ", ".join(self.allowed[:8]) + (" ..." if len(self.allowed) > 8 else "")
            return f"'{value}' is not an allowed {self.attribute} in {self.category} (allowed: {shown})"
        if self.pattern is not None and not re.fullmatch(self.pattern, value):
            return (
                f"'{value}' does not match the {self.attribute} pattern '{self.pattern}' of {self.category}"
            )
        return None

    def together(self, values: Sequence[str]) -> str | None:
        """Why a set of values of one product breaks an exclusivity, or None."""
        keys = {value_key(v) for v in values}
        for group in self.exclusive:
            hit = [g for g in group if value_key(g) in keys]
            if len(hit) > 1:
                return f"{' and '.join(repr(h) for h in hit)} exclude each other for {self.attribute}"
        return None


class RuleSet:
    """The rules of one file, looked up by attribute and category."""

    def __init__(self, rules: Sequence[Rule] = ()) -> None:
        self.rules = list(rules)

    def __bool__(self) -> bool:
        return bool(self.rules)

    @classmethod
    def from_file(cls, path: Path) -> RuleSet:
        """Parse a rules file; each error names the file, the rule's position and the field."""
        data = read_config_file(path)
        raw = data.get("rule", data.get("rules", []))
        if set(data) - {"rule", "rules"}:
            raise ConfigError(
                f"{path}: expected only [[rule]] tables, found {sorted(set(data) - {'rule', 'rules'})}"
            )
        if not isinstance(raw, list):
            raise ConfigError(f"{path}: expected a list of [[rule]] tables, found {type(raw).__name__}")
        return cls([_parse_rule(item, f"{path}: rule {i + 1}") for i, item in enumerate(raw)])

    def for_product(self, attribute: str, category: str | None) -> list[Rule]:
        """The rules on `attribute` that cover a product of `category`."""
        return [r for r in self.rules if r.attribute == attribute and r.applies_to(category)]

    def required(self, category: str | None) -> list[Rule]:
        """Rules that require an attribute for products of `category`."""
        return [r for r in self.rules if r.required and r.applies_to(category)]

    def to_list(self) -> list[dict[str, Any]]:
        out = []
        for r in self.rules:
            d: dict[str, Any] = {"attribute": r.attribute, "category": r.category, "action": r.action}
            if r.allowed is not None:
                d["allowed"] = list(r.allowed)
            if r.pattern is not None:
                d["pattern"] = r.pattern
            if r.exclusive:
                d["exclusive"] = [list(g) for g in r.exclusive]
            if r.required:
                d["required"] = True
            if r.default is not None:
                d["default"] = r.default
            if r.action == "lower":
                d["penalty"] = r.penalty
            out.append(d)
        return out

    @classmethod
    def from_list(cls, items: Sequence[dict[str, Any]]) -> RuleSet:
        return cls([_parse_rule(item, f"rule {i + 1}") for i, item in enumerate(items)])


def _parse_rule(item: Any, where: str) -> Rule:
    if not isinstance(item, dict):
        raise ConfigError(f"{where}: expected a table of rule fields, found {type(item).__name__}")
    unknown = set(item) - _KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown fields {sorted(unknown)}; expected some of {sorted(_KEYS)}")
    attribute = item.get("attribute")
    if not isinstance(attribute, str) or not attribute:
        raise ConfigError(
            f"{where}: 'attribute' must name the attribute the rule checks, found {attribute!r}"
        )

    def strings(key: str) -> tuple[str, ...] | None:
        v = item.get(key)
        if v is None:
            return None
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise ConfigError(f"{where}: '{key}' must be a list of strings, found {v!r}")
        return tuple(v)

    exclusive = item.get("exclusive", [])
    if not isinstance(exclusive, list) or not all(
        isinstance(g, list) and all(isinstance(x, str) for x in g) for g in exclusive
    ):
        raise ConfigError(
            f'{where}: \'exclusive\' must be a list of lists of values, e.g. [["Summer", "Winter"]]'
        )
    action = item.get("action", "reject")
    if action not in ("reject", "lower"):
        raise ConfigError(f"{where}: 'action' must be 'reject' or 'lower', found {action!r}")
    penalty = item.get("penalty", 0.5)
    if not isinstance(penalty, int | float) or not 0 <= penalty <= 1:
        raise ConfigError(f"{where}: 'penalty' must be a number in [0, 1], found {penalty!r}")
    pattern = item.get("pattern")
    if pattern is not None:
        try:
            re.compile(pattern)
        except (re.error, TypeError) as exc:
            raise ConfigError(f"{where}: 'pattern' is not a valid regular expression ({exc})") from None
    default = item.get("default")
    if default is not None and not isinstance(default, str):
        raise ConfigError(f"{where}: 'default' must be a string, found {default!r}")
    category = item.get("category", "*")
    if not isinstance(category, str):
        raise ConfigError(f"{where}: 'category' must be a category path or '*', found {category!r}")
    return Rule(
        attribute=attribute,
        category=" > ".join(p.strip() for p in category.split(">")) if category not in ("*", "") else "*",
        allowed=strings("allowed"),
        pattern=pattern,
        exclusive=tuple(tuple(g) for g in exclusive),
        required=bool(item.get("required", False)),
        default=default,
        action=action,
        penalty=float(penalty),
    )
