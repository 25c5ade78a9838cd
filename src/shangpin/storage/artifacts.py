"""Model directories: one folder per stage with meta.json, plus pipeline.json naming the stages."""

from __future__ import annotations

import json
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

from shangpin._util import atomic_write
from shangpin.errors import NotFittedError

PIPELINE_FILE = "pipeline.json"
_PACKAGES = ("shangpin", "torch", "transformers", "onnxruntime", "scikit-learn", "numpy")


def package_versions() -> dict[str, str]:
    """Versions of the packages a saved model depends on (recorded in meta.json)."""
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def read_pipeline_meta(model_dir: Path) -> dict[str, Any]:
    """Read pipeline.json of a model directory, with a clear error when it is not one."""
    path = model_dir / PIPELINE_FILE
    if not path.is_file():
        raise NotFittedError(
            f"expected a model directory with {PIPELINE_FILE} at {model_dir}, found "
            f"{'no such folder' if not model_dir.exists() else 'none'}; create one with 'shangpin train --model {model_dir}'"
        )
    meta: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return meta


def write_pipeline_meta(model_dir: Path, meta: dict[str, Any]) -> None:
    """Write pipeline.json atomically."""
    model_dir.mkdir(parents=True, exist_ok=True)
    with atomic_write(model_dir / PIPELINE_FILE) as fh:
        json.dump(meta, fh, indent=2, ensure_ascii=False)


def read_stage_meta(model_dir: Path, kind: str) -> dict[str, Any]:
    """meta.json of one stage in a model directory (kind, version, params, packages, train info)."""
    meta: dict[str, Any] = json.loads((model_dir / kind / "meta.json").read_text(encoding="utf-8"))
    return meta
