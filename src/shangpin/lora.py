"""LoRA (peft) for the fine-tuned stages: wrap a transformers model, measure the adapter, merge before export.

The adapter is always merged into the weights before the ONNX export, so a LoRA-trained model runs exactly as fast
as a fully fine-tuned one; what LoRA changes is how many parameters train and how small the trained delta is.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shangpin.errors import ConfigError

log = logging.getLogger(__name__)


def parse_targets(targets: str) -> list[str]:
    """Module names from a comma-separated string ("query,value")."""
    return [t.strip() for t in targets.split(",") if t.strip()]


def apply_lora(
    model: Any,
    *,
    rank: int,
    alpha: int,
    dropout: float,
    targets: str,
    modules_to_save: Sequence[str] = (),
    stage: str | None = None,
) -> Any:
    """`model` wrapped by peft with LoRA adapters on the `targets` linear layers; only the adapters and
    `modules_to_save` (e.g. a new classification head) train."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ConfigError(
            "lora_rank > 0 needs the package peft; run 'pip install peft' or set lora_rank=0", stage=stage
        ) from None
    names = parse_targets(targets)
    present = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    missing = [t for t in names if t not in present]
    if not names or missing:
        raise ConfigError(
            f"lora_targets '{targets}': expected comma-separated module names of the encoder "
            f"(e.g. query,key,value,dense for BERT), found {missing or 'none'} missing; "
            "set lora_targets to some of: query, key, value, dense",
            stage=stage,
        )
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=names,
        modules_to_save=list(modules_to_save) or None,
        bias="none",
    )
    return get_peft_model(model, config)


def adapter_report(peft_model: Any) -> dict[str, Any]:
    """Trainable and total parameters, and the bytes of the saved adapter vs the saved full model."""
    trainable, total = peft_model.get_nb_trainable_parameters()
    with tempfile.TemporaryDirectory(prefix="shangpin-lora-") as tmp:
        peft_model.save_pretrained(tmp)
        adapter_bytes = sum(f.stat().st_size for f in Path(tmp).iterdir() if f.is_file())
    return {
        "lora_trainable_params": int(trainable),
        "lora_total_params": int(total),
        "lora_adapter_bytes": adapter_bytes,
    }


def merge(peft_model: Any) -> tuple[Any, int]:
    """The base model with the adapters merged into its weights, and the bytes of that model saved in full."""
    merged = peft_model.merge_and_unload()
    with tempfile.TemporaryDirectory(prefix="shangpin-lora-") as tmp:
        merged.save_pretrained(tmp)
        full_bytes = sum(f.stat().st_size for f in Path(tmp).iterdir() if f.is_file())
    return merged, full_bytes
