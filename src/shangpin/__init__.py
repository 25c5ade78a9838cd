"""shangpin: structured, searchable catalog data from raw e-commerce listings."""

from __future__ import annotations

__version__ = "0.1.0"

from shangpin.errors import (
    ConfigError,
    DataError,
    IncompatibleModelError,
    NotFittedError,
    ShangpinError,
)
from shangpin.records import AttributeValue, CategoryPrediction, Event, Product, ScoredLabel, TagSuggestion

__all__ = [
    "AttributeValue",
    "CategoryPrediction",
    "ConfigError",
    "DataError",
    "Event",
    "IncompatibleModelError",
    "NotFittedError",
    "Product",
    "ScoredLabel",
    "TagSuggestion",
    "ShangpinError",
    "__version__",
]
