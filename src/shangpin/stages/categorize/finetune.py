"""Fine-tune the top layers of the sentence encoder as a category classifier, with early stopping on the dev split.

The head reads the mean-pooled token states, the same vector `MiniLMSentenceEncoder` returns, so the fine-tuned
encoder's export slots into the quality path unchanged: its sentence vectors, now shaped by the categories, join
the TF-IDF blocks in the linear SVM.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from shangpin._progress import track
from shangpin.encoders import num_threads, resolve_encoder

log = logging.getLogger(__name__)


def finetune_encoder(
    texts: Sequence[str],
    labels: Sequence[int],
    n_classes: int,
    *,
    dev_texts: Sequence[str] = (),
    dev_labels: Sequence[int] = (),
    encoder: str = "",
    trainable_layers: int = 2,
    epochs: int = 3,
    patience: int = 1,
    learning_rate: float = 1e-4,
    batch_size: int = 32,
    max_length: int = 96,
    lora_rank: int = 0,
    seed: int = 13,
) -> tuple[Any, dict[str, Any]]:
    """Train mean-pool + linear head over the encoder with its top `trainable_layers` layers unfrozen.

    With `lora_rank` > 0 the encoder stays frozen and LoRA adapters of that rank (alpha = 2 x rank) on every
    layer's query/key/value/dense weights train instead; they are merged into the weights before returning.

    Returns the fine-tuned bare encoder (a transformers model, for `export_onnx(..., output="last_hidden_state")`)
    and a log: per-epoch dev accuracy, the epoch kept and the seconds taken. Without dev data every epoch runs.
    """
    import torch
    from transformers import AutoModel, AutoTokenizer

    torch.manual_seed(seed)
    random.seed(seed)
    torch.set_num_threads(num_threads())
    path = resolve_encoder(encoder)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    base = AutoModel.from_pretrained(str(path))
    layers = base.encoder.layer
    for p in base.parameters():
        p.requires_grad = False
    lora: dict[str, Any] = {}
    if lora_rank:
        from shangpin.lora import adapter_report, apply_lora

        base = apply_lora(
            base, rank=lora_rank, alpha=2 * lora_rank, dropout=0.1, targets="query,key,value,dense"
        )
    else:
        for layer in layers[max(0, len(layers) - trainable_layers) :]:
            for p in layer.parameters():
                p.requires_grad = True
    head = torch.nn.Sequential(torch.nn.Dropout(0.1), torch.nn.Linear(base.config.hidden_size, n_classes))

    def embed(batch_texts: Sequence[str]) -> Any:
        enc = tokenizer(
            list(batch_texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        )
        hidden = base(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).float()
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)

    # The head starts from nothing and has hundreds of classes to learn: it gets 10x the encoder's rate.
    optim = torch.optim.AdamW(
        [
            {"params": [p for p in base.parameters() if p.requires_grad], "lr": learning_rate},
            {"params": list(head.parameters()), "lr": 10 * learning_rate},
        ],
        weight_decay=0.01,
    )
    order = list(range(len(texts)))
    steps = epochs * ((len(order) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(optim, lambda s: max(0.0, 1.0 - s / max(1, steps)))
    y = torch.tensor(list(labels), dtype=torch.long)

    def dev_accuracy() -> float:
        base.eval()
        head.eval()
        hits = 0
        with torch.no_grad():
            for i in range(0, len(dev_texts), 128):
                logits = head(embed(dev_texts[i : i + 128]))
                hits += int((logits.argmax(1) == torch.tensor(list(dev_labels[i : i + 128]))).sum())
        return hits / max(1, len(dev_texts))

    history: list[float] = []
    best_acc, best_state, bad = -1.0, None, 0
    t0 = time.perf_counter()
    for epoch in range(epochs):
        base.train()
        head.train()
        random.Random(seed + epoch).shuffle(order)
        batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        for idx in track(batches, description=f"fine-tuning epoch {epoch + 1}/{epochs}"):
            loss = torch.nn.functional.cross_entropy(head(embed([texts[i] for i in idx])), y[idx])
            optim.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optim.step()
            sched.step()
        if not dev_texts:
            continue
        acc = dev_accuracy()
        history.append(round(100 * acc, 2))
        log.info("fine-tuning epoch %d: dev accuracy %.2f", epoch + 1, 100 * acc)
        if acc > best_acc:
            best_acc, bad = acc, 0
            best_state = {k: v.detach().clone() for k, v in base.state_dict().items()}
        else:
            bad += 1
            if bad > patience:
                break
    if best_state is not None:
        base.load_state_dict(best_state)
    if lora_rank:
        from shangpin.lora import merge

        lora = adapter_report(base)
        base, lora["full_model_bytes"] = merge(base)
    base.eval()
    info = {
        "dev_accuracy_per_epoch": history,
        "epochs_run": len(history) if history else epochs,
        "kept_epoch": (int(np.argmax(history)) + 1) if history else epochs,
        "seconds": round(time.perf_counter() - t0, 1),
        **lora,
    }
    return base, info


def export_finetuned(model: Any, folder: Path, encoder: str = "") -> None:
    """Write the fine-tuned encoder as `MiniLMSentenceEncoder` files (ONNX + tokenizer) into `folder`."""
    from shangpin.sentence import MiniLMSentenceEncoder

    MiniLMSentenceEncoder.export(folder, encoder=encoder, model=model)
