"""Product files: streaming JSONL(.gz) and CSV readers with clear per-line errors, and the output writer.

The row readers (`read_rows`) and the skip bookkeeping (`ReadReport`, `skip_or_raise`) are shared with the
event reader in `storage/events.py`, so both kinds of file fail and skip lines the same way.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar, cast

from shangpin.errors import DataError
from shangpin.records import AttributeValue, CategoryPrediction, Product, ScoredLabel, TagSuggestion

T = TypeVar("T")

log = logging.getLogger(__name__)

MAX_TITLE_CHARS = 1000
MAX_DESCRIPTION_CHARS = 20000
_KNOWN_KEYS = {"id", "title", "description", "category", "attributes", "tags", "image", "breadcrumb"}
NA_VALUES = {"n/a"}  # ExtractGPT files write "n/a" for "known absent"


@dataclass
class ReadReport:
    """What a reader accepted, skipped and changed; nothing is dropped without being counted here.

    Attributes:
        read: records (products or events) yielded.
        skipped: lines skipped (only with skip_invalid), by reason.
        examples: first few "file:line: reason" messages for skipped lines.
        truncated: products whose title or description was cut to the maximum length.
    """

    read: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    truncated: int = 0
    unit: str = "products"
    """What `read` counts, for the summary."""

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())

    def summary(self) -> str:
        parts = [f"read {self.read} {self.unit}"]
        if self.n_skipped:
            reasons = ", ".join(f"{n} {r}" for r, n in self.skipped.most_common())
            parts.append(f"skipped {self.n_skipped} invalid lines ({reasons})")
        if self.truncated:
            parts.append(f"truncated {self.truncated} over-long texts")
        return "; ".join(parts)


def _open_binary(path: Path, kind: str = "product") -> IO[bytes]:
    if not path.exists():
        raise DataError(f"{path}: no such file; expected a .jsonl, .jsonl.gz or .csv {kind} file")
    if path.suffix == ".gz":
        return cast(IO[bytes], gzip.open(path, "rb"))
    return open(path, "rb")


def _is_csv(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith(".csv") or name.endswith(".csv.gz")


def read_products(
    path: Path,
    *,
    field_map: Mapping[str, str] | None = None,
    skip_invalid: bool = False,
    report: ReadReport | None = None,
) -> Iterator[Product]:
    """Stream products from a JSONL(.gz) or CSV(.gz) file.

    Args:
        field_map: source field -> contract field, e.g. {"name": "title", "sku": "id"}.
        skip_invalid: skip malformed lines (counted in `report`) instead of raising DataError.
        report: filled with counts of what was read, skipped and truncated.
    """
    report = report if report is not None else ReadReport()

    def convert(row: dict[str, Any], where: str) -> Product:
        product = product_from_dict(row, field_map=field_map, where=where, report=report)
        if product.image and "://" not in product.image and not Path(product.image).is_absolute():
            product.image = str(Path(path).parent / product.image)  # relative to the data file
        elif product.image is None and "productDisplayName" in row:
            photo = Path(path).parent / "images" / f"{product.product_id}.jpg"  # the styles.csv layout
            if photo.is_file():
                product.image = str(photo)
        return product

    return read_records(path, convert, kind="product", skip_invalid=skip_invalid, report=report)


def read_records(
    path: Path,
    convert: Callable[[dict[str, Any], str], T],
    *,
    kind: str,
    skip_invalid: bool = False,
    report: ReadReport | None = None,
) -> Iterator[T]:
    """Stream `convert(row, "file:line")` over the rows of a JSONL(.gz) or CSV(.gz) file.

    A malformed line, or a DataError from `convert`, stops the stream (or, with `skip_invalid`, is counted in
    `report` and skipped): one policy for products, events and ranking requests.
    """
    report = report if report is not None else ReadReport()
    for line_no, row in read_rows(Path(path), kind=kind):
        try:
            if isinstance(row, DataError):
                raise row
            record = convert(row, f"{path}:{line_no}")
        except DataError as exc:
            skip_or_raise(exc, skip_invalid=skip_invalid, report=report)
            continue
        report.read += 1
        yield record


def read_rows(path: Path, *, kind: str = "product") -> Iterator[tuple[int, dict[str, Any] | DataError]]:
    """Stream (line number, object) from a JSONL(.gz) or CSV(.gz) file without loading it whole.

    A malformed line (invalid UTF-8 or JSON, not an object, a CSV row with extra cells) comes as a DataError
    in place of the object, so the caller decides whether to stop or skip; `kind` names the records in messages.
    """
    return _csv_rows(path, kind) if _is_csv(path) else _jsonl_rows(path, kind)


def skip_or_raise(exc: DataError, *, skip_invalid: bool, report: ReadReport) -> None:
    """Count and log a bad line in `report` when skipping; otherwise raise it with the way to skip such lines."""
    if not skip_invalid:
        # Messages may end a sentence; the advice continues it.
        raise DataError(
            f"{exc.message.removesuffix('.')}; fix the line or pass --skip-invalid to skip such lines"
        ) from None
    reason = exc.message.split(": ", 1)[1].split(";")[0] if ": " in exc.message else exc.message
    report.skipped[_short_reason(reason)] += 1
    if len(report.examples) < 5:
        report.examples.append(exc.message)
    log.warning("skipping %s", exc.message)


def _short_reason(reason: str) -> str:
    for key in ("invalid JSON", "invalid UTF-8", "missing 'id'", "missing 'title'", "not a JSON object"):
        if key in reason:
            return key
    return reason[:60]


def _jsonl_rows(path: Path, kind: str = "product") -> Iterator[tuple[int, dict[str, Any] | DataError]]:
    with _open_binary(path, kind) as fh:
        for line_no, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield (
                    line_no,
                    DataError(
                        f"{path}:{line_no}: invalid UTF-8 at byte {exc.start}; re-encode the file as UTF-8"
                    ),
                )
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                yield line_no, DataError(f"{path}:{line_no}: invalid JSON ({exc.msg} at column {exc.colno})")
                continue
            if not isinstance(obj, dict):
                yield (
                    line_no,
                    DataError(
                        f"{path}:{line_no}: not a JSON object; expected one {kind} object per line, found {type(obj).__name__}"
                    ),
                )
                continue
            yield line_no, obj


def _csv_rows(path: Path, kind: str = "product") -> Iterator[tuple[int, dict[str, Any] | DataError]]:
    """CSV rows as dicts. Columns "attributes.<name>" become attributes; "tags" is split on "|"."""
    with _open_binary(path, kind) as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8", newline="")
        reader = csv.DictReader(text)
        try:
            for row in reader:
                line_no = reader.line_num
                obj: dict[str, Any] = {}
                attrs: dict[str, Any] = {}
                for key, value in row.items():
                    if key is None:
                        yield line_no, DataError(f"{path}:{line_no}: more cells than header columns")
                        break
                    if key.startswith("attributes."):
                        if value not in (None, ""):
                            attrs[key.split(".", 1)[1]] = None if value.lower() in NA_VALUES else value
                    elif key == "tags":
                        obj["tags"] = [t.strip() for t in (value or "").split("|") if t.strip()]
                    elif value not in (None, ""):
                        obj[key] = value
                else:
                    if attrs:
                        obj["attributes"] = attrs
                    yield line_no, obj
        except UnicodeDecodeError as exc:
            yield (
                reader.line_num + 1,
                DataError(f"{path}:{reader.line_num + 1}: invalid UTF-8 ({exc.reason})"),
            )
        except csv.Error as exc:
            yield reader.line_num, DataError(f"{path}:{reader.line_num}: invalid CSV ({exc})")


def _from_extractgpt(obj: dict[str, Any], where: str) -> dict[str, Any]:
    """Map an ExtractGPT/OA-Mine line {"input", "category", "target_scores"} onto the product contract."""
    attrs: dict[str, Any] = {}
    for name, values in (obj.get("target_scores") or {}).items():
        vals = [v for v in values if v not in NA_VALUES] if isinstance(values, dict) else values
        attrs[name] = vals if vals else None
    out = {"id": obj.get("id", where.rsplit(":", 1)[-1]), "title": obj["input"], "attributes": attrs}
    if obj.get("category"):
        out["category"] = obj["category"]
    return out


FASHION_ATTRIBUTES = ("gender", "baseColour", "season", "usage", "year")


def _from_fashion_styles(obj: dict[str, Any]) -> dict[str, Any]:
    """Map a row of the Kaggle/Myntra fashion `styles.csv` onto the product contract: productDisplayName is the
    title, masterCategory > subCategory > articleType the category, the other columns attributes."""
    out: dict[str, Any] = {"id": obj["id"], "title": obj["productDisplayName"]}
    levels = [str(obj[k]) for k in ("masterCategory", "subCategory", "articleType") if obj.get(k)]
    if levels:
        out["category"] = " > ".join(levels)
    attrs = {k: obj[k] for k in FASHION_ATTRIBUTES if obj.get(k) not in (None, "", "NA")}  # NA: not recorded
    if attrs:
        out["attributes"] = attrs
    return out


def _from_mwpd(obj: dict[str, Any]) -> dict[str, Any]:
    """Map an MWPD 2020 / WDC line {"ID", "Name", "Description", "CategoryText", "lvl1".."lvl3"} onto the contract."""
    out: dict[str, Any] = {"id": obj.get("ID"), "title": obj.get("Name") or ""}
    if obj.get("Description"):
        out["description"] = obj["Description"]
    if obj.get("CategoryText"):
        out["breadcrumb"] = obj["CategoryText"]
    levels = [str(obj[k]) for k in ("lvl1", "lvl2", "lvl3") if obj.get(k)]
    if levels:
        out["category"] = " > ".join(levels)
    return out


def product_from_dict(
    obj: Mapping[str, Any],
    *,
    field_map: Mapping[str, str] | None = None,
    where: str = "input",
    report: ReadReport | None = None,
) -> Product:
    """Validate one input object (the product JSONL contract) into a Product; DataError names `where` and field."""
    data = {field_map.get(k, k) if field_map else k: v for k, v in obj.items()}
    if "title" not in data and "input" in data and "target_scores" in data:
        data = _from_extractgpt(data, where)
    elif "title" not in data and "Name" in data and "ID" in data:
        data = _from_mwpd(data)
    elif "title" not in data and "productDisplayName" in data and "id" in data:
        data = _from_fashion_styles(data)
    if data.get("title") is None and data.get("image"):
        data["title"] = ""  # an image-only product (e.g. a photo to classify)
    for key in ("id", "title"):
        if key not in data or data[key] is None:
            found = ", ".join(sorted(obj)) or "nothing"
            raise DataError(
                f"{where}: missing '{key}'; expected fields [id, title, description?, category?, attributes?, "
                f"tags?, image?] (title may be left out when image is given) but found [{found}]; rename columns "
                "with field_map"
            )
    pid = data["id"]
    if isinstance(pid, int) and not isinstance(pid, bool):
        pid = str(pid)
    if not isinstance(pid, str) or not pid.strip():
        raise DataError(f"{where}: field 'id' must be a non-empty string, found {pid!r}")
    title = _text(data["title"], "title", where)
    description = _text(data.get("description") or "", "description", where)
    truncated = False
    if len(title) > MAX_TITLE_CHARS:
        log.warning("%s: title of %d characters truncated to %d", where, len(title), MAX_TITLE_CHARS)
        title, truncated = title[:MAX_TITLE_CHARS], True
    if len(description) > MAX_DESCRIPTION_CHARS:
        log.warning(
            "%s: description of %d characters truncated to %d", where, len(description), MAX_DESCRIPTION_CHARS
        )
        description, truncated = description[:MAX_DESCRIPTION_CHARS], True
    if truncated and report is not None:
        report.truncated += 1
    product = Product(product_id=pid, title=title, description=description)
    cat = data.get("category")
    if cat is not None:
        if isinstance(cat, dict):
            cat = cat.get("path")
        if not isinstance(cat, str):
            raise DataError(f"{where}: field 'category' must be a string like 'A > B > C', found {cat!r}")
        path = normalize_path(cat)
        if path:
            product.category = CategoryPrediction(path=path)
    attrs = data.get("attributes")
    if attrs is not None:
        if not isinstance(attrs, dict):
            raise DataError(
                f"{where}: field 'attributes' must be an object {{name: value | null}}, found {attrs!r}"
            )
        for name, value in attrs.items():
            product.attributes[str(name)] = _attribute(str(name), value, where)
    tags = data.get("tags")
    if tags is not None:
        if not isinstance(tags, list):
            raise DataError(f"{where}: field 'tags' must be a list of strings, found {tags!r}")
        for tag in tags:
            if isinstance(tag, dict) and "tag" in tag:
                product.tags.append(ScoredLabel(str(tag["tag"]), float(tag.get("score", 1.0))))
            elif isinstance(tag, str):
                product.tags.append(ScoredLabel(tag, 1.0))
            else:
                raise DataError(f"{where}: field 'tags' must hold strings, found {tag!r}")
    for key in ("image", "breadcrumb"):
        if data.get(key) is not None:
            setattr(product, key, _text(data[key], key, where))
    return product


def _text(value: Any, name: str, where: str) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise DataError(f"{where}: field '{name}' must be a string, found {type(value).__name__}")
    return value


def _attribute(name: str, value: Any, where: str) -> AttributeValue | None:
    if isinstance(value, dict) and "value" in value:
        value = value["value"]
    if value is None:
        return None
    values = [value] if isinstance(value, str | int | float) else value
    if not isinstance(values, list) or not all(isinstance(v, str | int | float) for v in values):
        raise DataError(
            f"{where}: attribute '{name}' must be a string, a list of strings or null, found {value!r}"
        )
    strs = [str(v) for v in values if str(v).strip().lower() not in NA_VALUES]
    if not strs:
        return None
    return AttributeValue(name=name, value=strs[0], alternatives=tuple(strs[1:]), source="given")


def normalize_path(path: str) -> str:
    """'A>B >  C' -> 'A > B > C'."""
    return " > ".join(p.strip() for p in path.split(">") if p.strip())


def product_to_output(product: Product, fields: Iterable[str]) -> dict[str, Any]:
    """The output contract of `predict` for the fields that the pipeline's stages assigned."""
    fields = set(fields)
    out: dict[str, Any] = {"id": product.product_id}
    if "category" in fields and product.category is not None:
        c = product.category
        out["category"] = {
            "path": c.path,
            "score": round(c.score, 4),
            "alternatives": [{"path": a.label, "score": round(a.score, 4)} for a in c.alternatives],
            "abstained": c.abstained,
        }
        if c.levels:
            out["category"]["levels"] = [{"path": lv.label, "score": round(lv.score, 4)} for lv in c.levels]
    attrs: dict[str, Any] = {}
    # `predict_attributes` merges the extracted values into its own output, so it has the last word.
    for source_field in ("extracted", "predicted"):
        if source_field in fields:
            for name, av in getattr(product, source_field).items():
                attrs[name] = attribute_to_dict(av)
    if attrs:
        out["attributes"] = attrs
    if "tags" in fields:
        out["tags"] = [tag_to_dict(t) for t in product.tags]
    if "new_tags" in fields and product.new_tags:
        out["new_tags"] = [tag_to_dict(t) for t in product.new_tags]
    return out


def tag_to_dict(tag: ScoredLabel) -> dict[str, Any]:
    """One tag in the output contract: {"tag", "score"}, plus "selected" and "new" for recommended tags."""
    d: dict[str, Any] = {"tag": tag.label, "score": round(tag.score, 4)}
    if isinstance(tag, TagSuggestion):
        d["selected"] = tag.selected
        if tag.new:
            d["new"] = True
    return d


def attribute_to_dict(av: AttributeValue) -> dict[str, Any]:
    """One attribute value in the output contract."""
    d: dict[str, Any] = {"value": av.value or None, "score": round(av.score, 4), "source": av.source}
    if av.field is not None:
        d.update({"field": av.field, "start": av.start, "end": av.end})
    if av.values:
        d["values"] = list(av.values)
    if av.canonical is not None:
        d["canonical"] = av.canonical
    if av.conflict:
        d.update({"conflict": True, "predicted_value": av.alternatives[0] if av.alternatives else None})
    if av.rule is not None:
        d["rule"] = av.rule
    if av.rejected:
        d["rejected"] = True
    return d


def write_jsonl(rows: Iterable[Mapping[str, Any]], fh: IO[str]) -> int:
    """Write one JSON object per line; returns the number written."""
    n = 0
    for row in rows:
        fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        n += 1
    return n


def product_to_input(product: Product) -> dict[str, Any]:
    """A Product back in the input contract (for writing demo data, fixtures and splits)."""
    out: dict[str, Any] = {"id": product.product_id, "title": product.title}
    if product.description:
        out["description"] = product.description
    if product.category is not None:
        out["category"] = product.category.path
    if product.attributes:
        out["attributes"] = {
            k: (None if v is None else ([v.value, *v.alternatives] if v.alternatives else v.value))
            for k, v in product.attributes.items()
        }
    if product.tags:
        out["tags"] = [t.label for t in product.tags]
    for key in ("image", "breadcrumb"):
        if getattr(product, key):
            out[key] = getattr(product, key)
    return out
