"""The one record type that flows through every stage, and its value objects."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Source = Literal["text", "predicted", "given", "rule"]
TextField = Literal["title", "description"]


@dataclass(frozen=True, slots=True)
class ScoredLabel:
    """A label (tag, category path, attribute name) with a score in [0, 1]."""

    label: str
    score: float


@dataclass(frozen=True, slots=True)
class TagSuggestion(ScoredLabel):
    """A recommended tag: `score` in [0, 1], best first in a product's list.

    `selected` says whether the score reached the threshold tuned for this tag on the dev split (the list itself is
    ranked and capped, so ranking metrics can use all of it); `new` marks a keyphrase taken from the product's
    text that is not in the tag vocabulary.
    """

    selected: bool = True
    new: bool = False


@dataclass(frozen=True, slots=True)
class AttributeValue:
    """One attribute value.

    `source` is "text" when the value is a span of the product text (then `field`, `start`, `end` locate it:
    ``getattr(product, field)[start:end] == value``), "predicted" when a model inferred it without a span,
    "given" when it came with the input (gold labels, merchant data) and "rule" when a business rule's default
    filled it.
    """

    name: str
    value: str
    score: float = 1.0
    source: Source = "given"
    field: TextField | None = None
    start: int | None = None
    end: int | None = None
    alternatives: tuple[str, ...] = ()
    """Gold: other acceptable values. A text value in conflict with a confident model: the model's value."""
    values: tuple[str, ...] = ()
    """A multi-valued attribute's values, `value` first (empty for single-valued attributes)."""
    canonical: str | None = None
    """The value in the canonical vocabulary, when normalisation changed it ("navy" -> "Navy Blue")."""
    conflict: bool = False
    """A text value that a model contradicts with high confidence (see `alternatives`): worth a human look."""
    rule: str | None = None
    """Why a business rule changed, lowered or rejected this value."""
    rejected: bool = False
    """A business rule rejected the value; it is kept, with `rule` saying why, so nothing disappears silently."""


@dataclass(frozen=True, slots=True)
class CategoryPrediction:
    """A category path "A > B > C" with its score, alternatives and whether the model abstained.

    `levels` scores each ancestor of `path` (top first, ending with `path` itself): the probability that the
    product belongs under it, so a shop can act on a confident "A > B" when the leaf is uncertain.
    """

    path: str
    score: float = 1.0
    alternatives: tuple[ScoredLabel, ...] = ()
    abstained: bool = False
    levels: tuple[ScoredLabel, ...] = ()


@dataclass(frozen=True, slots=True)
class Event:
    """One behaviour event (search, view, click, add_to_cart, purchase)."""

    session_id: str
    action: str
    timestamp: float = 0.0
    product_id: str | None = None
    user_id: str | None = None
    category: str | None = None
    query: str | None = None
    results: tuple[str, ...] = ()
    position: int | None = None


@dataclass(slots=True)
class Product:
    """A product listing: inputs, known (gold) values and stage outputs.

    Gold labels and predictions share fields where they mean the same thing: `category` is the known category on
    input and the predicted one after `categorize`; `attributes` holds values known on input (a value of None means
    "known absent") and is what extraction is trained and evaluated against; `extracted` and `predicted` are written
    by exactly one stage each (see `Stage.assigns`).
    """

    product_id: str
    title: str
    description: str = ""
    category: CategoryPrediction | None = None
    attributes: dict[str, AttributeValue | None] = field(default_factory=dict)
    tags: list[ScoredLabel] = field(default_factory=list)
    image: str | None = None
    breadcrumb: str | None = None
    # Outputs, each written by one stage.
    extracted: dict[str, AttributeValue] = field(default_factory=dict)
    predicted: dict[str, AttributeValue] = field(default_factory=dict)
    new_tags: list[ScoredLabel] = field(default_factory=list)
    """Keyphrase tags outside the tag vocabulary (written by `recommend_tags` next to `tags`)."""

    @property
    def category_path(self) -> str | None:
        """The category path, or None when the product has none."""
        return self.category.path if self.category is not None else None

    def text(self, field_name: TextField) -> str:
        """The text of a field named in an AttributeValue."""
        return self.title if field_name == "title" else self.description


INPUT_FIELDS: tuple[str, ...] = (
    "product_id",
    "title",
    "description",
    "category",
    "attributes",
    "tags",
    "image",
    "breadcrumb",
)
"""Product fields that may be filled on input; a stage's `requires` must be among these or assigned earlier."""
