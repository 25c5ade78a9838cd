"""Pipeline configuration: TOML files plus `a.b=c` overrides, validated once into typed values."""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shangpin.errors import ConfigError
from shangpin.registry import get_stage_class

if TYPE_CHECKING:
    from shangpin.stages.base import Stage

_PATH_SUFFIXES = ("_file", "_dir", "_path")
_PATH_KEYS = {"encoder", "schema", "taxonomy"}


@dataclass(frozen=True)
class PipelineConfig:
    """Validated configuration.

    Attributes:
        batch_size: products per batch when predicting.
        stages: stage kind -> hyperparameters (only the ones set; the rest keep their signature defaults).
        source: the file it was read from, if any.
    """

    batch_size: int = 256
    stages: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    source: Path | None = None

    def stage_params(self, kind: str) -> dict[str, Any]:
        """Hyperparameters configured for a stage kind."""
        return dict(self.stages.get(kind, {}))


def parse_override(text: str, default_stage: str | None = None) -> tuple[list[str], Any]:
    """Parse "stages.kind.key=value" (or "key=value" for `default_stage`) into a dotted path and a typed value.

    The value is read as a TOML value ("3" -> 3, "true" -> True, "[1, 2]" -> list); anything else stays a string.
    """
    if "=" not in text:
        raise ConfigError(f"expected an override like 'stages.extract_attributes.epochs=3', found '{text}'")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if len(parts) == 1 and default_stage:
        parts = ["stages", default_stage, parts[0]]
    if (
        not parts
        or (parts[0] == "stages" and len(parts) != 3)
        or (parts[0] == "pipeline" and len(parts) != 2)
    ):
        raise ConfigError(
            f"override '{text}': expected 'stages.<kind>.<key>=value', 'pipeline.<key>=value' "
            "or, with a --task, '<key>=value'"
        )
    if parts[0] not in ("stages", "pipeline"):
        raise ConfigError(
            f"override '{text}': the first part must be 'stages' or 'pipeline', found '{parts[0]}'"
        )
    try:
        value: Any = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return parts, value


def load_config(
    path: Path | None = None, overrides: Iterable[str] = (), default_stage: str | None = None
) -> PipelineConfig:
    """Read a TOML config (or start from defaults), apply overrides, and validate every stage section."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(
                f"config file {path} not found; pass an existing TOML file to --config"
            ) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML ({exc}); fix the file") from None
    unknown = set(data) - {"pipeline", "stages"}
    if unknown:
        raise ConfigError(
            f"{path}: unknown sections {sorted(unknown)}; expected [pipeline] and [stages.<kind>]"
        )
    pipeline = dict(data.get("pipeline", {}))
    stages: dict[str, dict[str, Any]] = {k: dict(v) for k, v in data.get("stages", {}).items()}
    for text in overrides:
        parts, value = parse_override(text, default_stage)
        if parts[0] == "pipeline":
            pipeline[parts[1]] = value
        else:
            stages.setdefault(parts[1], {})[parts[2]] = value
    base = path.parent if path is not None else Path.cwd()
    for kind, params in stages.items():
        cls = get_stage_class(kind)
        for key, value in list(params.items()):
            if isinstance(value, str) and (key in _PATH_KEYS or key.endswith(_PATH_SUFFIXES)) and value:
                p = Path(value).expanduser()
                if not p.is_absolute() and (base / p).exists():
                    params[key] = str((base / p).resolve())
        validate_params(cls, params, where=f"stages.{kind}")
    batch_size = pipeline.pop("batch_size", 256)
    if pipeline:
        raise ConfigError(f"unknown keys {sorted(pipeline)} in [pipeline]; valid: ['batch_size']")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"pipeline.batch_size: expected a positive integer, found {batch_size!r}")
    return PipelineConfig(batch_size=batch_size, stages=stages, source=path)


def validate_params(cls: type[Stage[Any]], params: Mapping[str, Any], where: str) -> None:
    """Check keys and value types against the stage's signature defaults; raise ConfigError naming the key."""
    defaults = cls().get_params()
    for key, value in params.items():
        if key not in defaults:
            raise ConfigError(f"{where}.{key}: unknown key. Valid keys: {', '.join(sorted(defaults))}")
        default = defaults[key]
        if default is None or value is None:
            continue
        expected: tuple[type, ...] = (float, int) if isinstance(default, float) else (type(default),)
        ok = isinstance(value, expected) and not (isinstance(value, bool) and not isinstance(default, bool))
        if not ok:
            raise ConfigError(
                f"{where}.{key}: expected {type(default).__name__} (default {default!r}), "
                f"found {type(value).__name__} {value!r}"
            )


def build_stage(kind: str, config: PipelineConfig) -> Stage[Any]:
    """Instantiate a stage from its configured hyperparameters."""
    cls = get_stage_class(kind)
    return cls(**config.stage_params(kind))
