"""Fine-tuning the token-classification model with torch (imported only when training)."""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from shangpin._progress import track
from shangpin.encoders import num_threads, takes_token_types
from shangpin.errors import ConfigError

log = logging.getLogger(__name__)


def build_model(
    encoder: Path,
    labels: Sequence[str],
    num_layers: int,
    n_token_types: int = 0,
    seed: int = 0,
    vocab_size: int = 0,
    new_rows_like: int | None = None,
) -> Any:
    """A token-classification head on the encoder, keeping only its first `num_layers` layers; the new head's
    initial weights are drawn from `seed` (unseeded, two trainings with the same seed scored up to 1.4 micro-F1
    apart on OA-Mine).

    With `n_token_types` > 2 the token-type embedding grows to that many rows, each new row starting as a copy of
    type 1 (so the model starts out exactly as pretrained and learns what the new types mean).
    With `vocab_size` above the checkpoint's the word embedding grows likewise, each new row a copy of row
    `new_rows_like` ([UNK]: the tokens the grown vocabulary now tells apart start out as the model saw them).
    """
    import torch
    from transformers import AutoModelForTokenClassification
    from transformers.utils import logging as hf_logging

    torch.manual_seed(seed)
    hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]  # the "newly initialised head" report is expected here
    model = AutoModelForTokenClassification.from_pretrained(
        str(encoder),
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={lab: i for i, lab in enumerate(labels)},
    )
    base = getattr(model, model.base_model_prefix)
    layers = base.encoder.layer
    if 0 < num_layers < len(layers):
        base.encoder.layer = torch.nn.ModuleList(list(layers)[:num_layers])
        model.config.num_hidden_layers = num_layers
    words = model.get_input_embeddings()
    if vocab_size > words.num_embeddings:
        old = words.num_embeddings
        model.resize_token_embeddings(vocab_size, mean_resizing=False)
        if new_rows_like is not None:
            with torch.no_grad():
                grown = model.get_input_embeddings().weight
                grown[old:] = grown[new_rows_like]
    types = getattr(base.embeddings, "token_type_embeddings", None)
    if n_token_types and types is None:
        raise ConfigError(
            f"case_features needs an encoder with token-type (segment) embeddings; {encoder} has none "
            "(MPNet-style). Set case_features=false or use a BERT-style encoder."
        )
    if types is not None and n_token_types > types.num_embeddings:
        grown = torch.nn.Embedding(n_token_types, types.embedding_dim)
        with torch.no_grad():
            grown.weight[: types.num_embeddings] = types.weight
            grown.weight[types.num_embeddings :] = types.weight[1]
        base.embeddings.token_type_embeddings = grown
        model.config.type_vocab_size = n_token_types
    return model


def _depth_from_top(name: str, n_layers: int) -> int:
    """How many layers below the head a parameter sits: 0 for the head, i for the i-th layer from the top,
    n_layers + 1 for the embeddings (layer-wise learning-rate decay scales the rate by decay ** depth)."""
    match = re.search(r"\.layer\.(\d+)\.", name)
    if match:
        return max(n_layers - int(match.group(1)), 1)
    return n_layers + 1 if "embeddings" in name else 0


def _rows_only(model: Any, rows: Sequence[int]) -> Any:
    """Swap the model's word embeddings for ones of which only `rows` (the token ids the training data holds)
    are parameters; the others stay fixed. Returns the module, whose `merged()` gives back a plain embedding.

    The other rows would get no gradient anyway, so the model learns the same (AdamW's weight decay no longer
    shrinks them by ~0.4 % over a run), but the optimiser, gradient clipping and zeroing no longer sweep the
    whole 30,522 x 384 matrix at every step: that sweep was a quarter of a CPU step (docs/BENCHMARKS.md).
    """
    import torch

    class RowsOnly(torch.nn.Module):
        def __init__(self, base: torch.nn.Embedding, ids: torch.Tensor) -> None:
            super().__init__()
            # Plain tensors, not buffers: this module only lives while training, on the CPU.
            self.padding_idx = base.padding_idx
            self.fixed: torch.Tensor = base.weight.detach().clone()
            self.ids = ids
            self.where = torch.full((base.num_embeddings,), -1, dtype=torch.long)
            self.where[ids] = torch.arange(len(ids))
            self.rows = torch.nn.Parameter(base.weight.detach()[ids].clone())

        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            at = self.where[input_ids]
            known = at >= 0
            if bool(known.all()):
                return self.rows[at]
            fixed = torch.nn.functional.embedding(input_ids, self.fixed)
            return torch.where(known[..., None], self.rows[at.clamp(min=0)], fixed)

        def merged(self) -> torch.nn.Embedding:
            rows, dim = self.fixed.shape
            out = torch.nn.Embedding(rows, dim, padding_idx=self.padding_idx)
            with torch.no_grad():
                out.weight.copy_(self.fixed)
                out.weight[self.ids] = self.rows
            return out

    base = model.get_input_embeddings()
    keep = sorted({int(r) for r in rows if 0 <= int(r) < base.num_embeddings and int(r) != base.padding_idx})
    module = RowsOnly(base, torch.tensor(keep, dtype=torch.long))
    model.set_input_embeddings(module)
    return module


def bf16_is_fast() -> bool:
    """Whether this CPU multiplies bfloat16 matrices in hardware (Intel AMX): training under bf16 autocast then
    takes about half the time; without it (AVX2 machines) bf16 is emulated and slower than float32."""
    import torch

    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    try:
        return bool(probe()) if probe is not None else False
    except RuntimeError:
        return False


def _bucketed(lengths: Sequence[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Shuffled batches of similar lengths: less padding, so each step costs less on a CPU."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    chunk = batch_size * 16
    batches: list[list[int]] = []
    for c in range(0, len(order), chunk):
        part = sorted(order[c : c + chunk], key=lambda i: lengths[i])
        batches.extend(part[b : b + batch_size] for b in range(0, len(part), batch_size))
    rng.shuffle(batches)
    return batches


def train_token_classifier(
    model: Any,
    batches_of: Any,
    lengths: Sequence[int],
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    weight_decay: float,
    warmup_ratio: float,
    seed: int,
    stage: str,
    freeze_embeddings: bool = True,
    layer_decay: float = 1.0,
    average_last: int = 0,
    trained_rows: Sequence[int] | None = None,
    bf16: bool = False,
) -> dict[str, float]:
    """Train with AdamW and linear warm-up/decay on length-bucketed batches.

    `lengths` are the examples' token counts; `batches_of(indices)` returns (input_ids, attention_mask,
    token_type_ids, labels, allowed[, weights]) numpy arrays, `allowed` (rows x labels, bool) or None: the labels
    each row's softmax may use (the others get no probability mass, as at decoding); `weights` (rows x tokens,
    float, optional): the loss is the weighted sum of the tokens' cross-entropies instead of their mean. With
    `average_last` > 0 the model ends with the mean of its weights at the end of each of the last `average_last`
    epochs. `trained_rows`: token ids whose word-embedding rows train (the ids in the training data); the others
    stay fixed, which costs nothing in what is learned and saves a quarter of a step's time. None = every row.
    `bf16`: run forward and backward under bfloat16 autocast (weights and optimiser stay float32).
    """
    import torch
    from transformers import get_linear_schedule_with_warmup

    torch.manual_seed(seed)
    rng = random.Random(seed)
    torch.set_num_threads(num_threads())
    n_examples = len(lengths)
    steps_per_epoch = max(1, -(-n_examples // batch_size))
    total = steps_per_epoch * epochs
    if freeze_embeddings:
        # Every row fixed, the rows in use included (with `trained_rows` only those rows cost time anyway).
        model.get_input_embeddings().weight.requires_grad_(False)
    rows_only = None if freeze_embeddings or trained_rows is None else _rows_only(model, trained_rows)
    no_decay = ("bias", "LayerNorm.weight")
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    n_layers = int(getattr(model.config, "num_hidden_layers", 0))
    grouped: dict[tuple[float, float], list[Any]] = {}
    for name, param in trainable:
        scale = layer_decay ** _depth_from_top(name, n_layers)
        key = (learning_rate * scale, 0.0 if any(k in name for k in no_decay) else weight_decay)
        grouped.setdefault(key, []).append(param)
    groups = [{"params": ps, "lr": lr, "weight_decay": wd} for (lr, wd), ps in grouped.items()]
    opt = torch.optim.AdamW(groups, lr=learning_rate)
    n_trained = sum(p.numel() for _, p in trainable)
    sched = get_linear_schedule_with_warmup(opt, int(warmup_ratio * total), total)  # type: ignore[no-untyped-call]
    with_types = takes_token_types(model)
    average = torch.optim.swa_utils.AveragedModel(model) if average_last > 1 else None
    model.train()
    t0 = time.perf_counter()
    loss_value = float("nan")
    for epoch in track(range(epochs), f"{stage}: training", total=epochs):
        losses = []
        for batch in _bucketed(lengths, batch_size, rng):
            ids, mask, types, labels, allowed, *extra = batches_of(batch)
            weights = extra[0] if extra else None
            inputs = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}
            if with_types:
                inputs["token_type_ids"] = torch.from_numpy(types)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                logits = model(**inputs).logits.float()
            if allowed is not None:
                logits = logits.masked_fill(~torch.from_numpy(allowed)[:, None, :], -1e4)
            flat = (logits.reshape(-1, logits.shape[-1]), torch.from_numpy(labels).reshape(-1))
            if weights is None:
                loss = torch.nn.functional.cross_entropy(*flat, ignore_index=-100)
            else:
                per_token = torch.nn.functional.cross_entropy(*flat, ignore_index=-100, reduction="none")
                loss = (per_token * torch.from_numpy(weights).reshape(-1)).sum()
            loss.backward()  # type: ignore[no-untyped-call]
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad()
            losses.append(float(loss.detach()))
        loss_value = float(np.mean(losses)) if losses else float("nan")
        if average is not None and epoch >= epochs - average_last:
            average.update_parameters(model)
        log.info("stage '%s': epoch %d/%d loss %.4f", stage, epoch + 1, epochs, loss_value)
    if average is not None:
        model.load_state_dict(average.module.state_dict())
    if rows_only is not None:
        model.set_input_embeddings(rows_only.merged())
    model.eval()
    return {
        "train_seconds": time.perf_counter() - t0,
        "final_loss": loss_value,
        "trainable_params": n_trained,
    }
