"""Tokenise products into model inputs whose tokens keep their character offsets, and label gold spans."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tokenizers import Encoding, Tokenizer

from shangpin.errors import ConfigError
from shangpin.records import Product, TextField
from shangpin.text import at_word_boundaries, has_han

FIELDS: tuple[TextField, ...] = ("title", "description")


@dataclass
class Sequence_:
    """One model input: [CLS] (category [SEP]) text tokens [SEP] (...), and where its words are.

    Labels and predictions live on the first token of each word (the tokenizer's pre-tokenised words: split at
    spaces and punctuation), so a value never starts or ends inside a word.

    Attributes:
        product: index of the product in the batch.
        ids: token ids.
        type_ids: 0 for the category segment; for product text 1, or with case features the shape of the
            token's word (see `word_shape`), since the uncased tokenizer drops what capitals say about names.
        words: token position of each text word's first token.
        spans: per word, (field, start, end) character offsets of the whole word.
    """

    product: int
    ids: list[int] = field(default_factory=list)
    type_ids: list[int] = field(default_factory=list)
    words: list[int] = field(default_factory=list)
    spans: list[tuple[TextField, int, int]] = field(default_factory=list)


class Encoder:
    """Turns products into `Sequence_`s with the checkpoint's fast tokenizer (no transformers import needed).

    Args:
        tokenizer_file: tokenizer.json of the checkpoint.
        max_length: tokens per sequence, special tokens included.
        use_description: also read the description (in windows when it is long).
    """

    def __init__(
        self,
        tokenizer_file: Path,
        max_length: int = 128,
        use_description: bool = True,
        case_features: bool = False,
        category_prefix: bool = True,
    ) -> None:
        self.tokenizer = Tokenizer.from_file(str(tokenizer_file))
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        # BERT-style names first, then RoBERTa/MPNet-style ones (<s> text </s>), which read the same way here.
        self.cls_id = self._special("[CLS]", "<s>")
        self.sep_id = self._special("[SEP]", "</s>")
        self.pad_id = self._special("[PAD]", "<pad>")
        self.mask_id: int | None = next(
            (tid for t in ("[MASK]", "<mask>") if (tid := self.tokenizer.token_to_id(t)) is not None), None
        )
        self.max_length = max_length
        self.use_description = use_description
        self.case_features = case_features
        self.category_prefix = category_prefix

    @property
    def vocab_size(self) -> int:
        return int(self.tokenizer.get_vocab_size(with_added_tokens=True))

    @property
    def unk_id(self) -> int | None:
        return next(
            (tid for t in ("[UNK]", "<unk>") if (tid := self.tokenizer.token_to_id(t)) is not None), None
        )

    def add_characters(self, texts: Iterable[str], min_count: int) -> list[str]:
        """Give Chinese characters that the vocabulary reads as [UNK] entries of their own; returns them.

        all-MiniLM-L6-v2's English vocabulary lacks most Chinese characters (13 % of the characters of the
        Chinese e-commerce NER titles read as [UNK], among them 只, 鼠, 茶 and 袋), so brands and product words
        look alike to the model. Characters seen at least `min_count` times in `texts` are appended to the
        WordPiece vocabulary (ids after the existing ones); the model's new embedding rows start as [UNK]'s
        and are learned in fine-tuning. Only WordPiece vocabularies grow; others are left as they are.
        """
        unk = self.unk_id
        texts = [t for t in texts if t and has_han(t)] if min_count > 0 and unk is not None else []
        if not texts:
            return []  # English data: nothing to add, and the tokenizer is not serialised
        spec = json.loads(self.tokenizer.to_str())
        model = spec.get("model", {})
        if model.get("type") != "WordPiece":
            return []
        counts: Counter[str] = Counter()
        for text, enc in zip(
            texts, self.tokenizer.encode_batch(texts, add_special_tokens=False), strict=True
        ):
            for tid, (s, e) in zip(enc.ids, enc.offsets, strict=True):
                if tid == unk and e - s == 1 and has_han(text[s]):
                    counts[text[s]] += 1
        new = sorted(c for c, n in counts.items() if n >= min_count and c not in model["vocab"])
        if not new:
            return []
        base = self.vocab_size
        for k, char in enumerate(new):
            model["vocab"][char] = base + k
        self.tokenizer = Tokenizer.from_str(json.dumps(spec, ensure_ascii=False))
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        return new

    def _special(self, *tokens: str) -> int:
        for token in tokens:
            tid = self.tokenizer.token_to_id(token)
            if tid is not None:
                return int(tid)
        raise ConfigError(
            f"the encoder's tokenizer has none of the special tokens {' / '.join(tokens)}; expected a BERT- or "
            "RoBERTa-style checkpoint folder with a tokenizer.json"
        )

    def encode(self, products: Sequence[Product], categories: Sequence[str]) -> list[Sequence_]:
        """Sequences for a batch; a product yields one sequence, more when its description is long."""
        cats = (
            self.tokenizer.encode_batch([c or "" for c in categories], add_special_tokens=False)
            if self.category_prefix
            else None
        )
        titles = self.tokenizer.encode_batch([p.title for p in products], add_special_tokens=False)
        descs = (
            self.tokenizer.encode_batch([p.description for p in products], add_special_tokens=False)
            if self.use_description and any(p.description for p in products)
            else None
        )
        out: list[Sequence_] = []
        for i, product in enumerate(products):
            cat_ids = cats[i].ids[:16] if cats is not None else []
            room = self.max_length - len(cat_ids) - 3
            seq = self._start(i, cat_ids)
            title = titles[i]
            n_title = min(len(title.ids), max(room, 8))
            self._add(seq, "title", title, 0, n_title, product.title)
            seq.ids.append(self.sep_id)
            seq.type_ids.append(1)
            if descs is not None and product.description:
                d, pos, cur = descs[i], 0, seq
                room = self.max_length - len(cur.ids) - 1
                while pos < len(d.ids):
                    if room < 16:
                        out.append(cur)
                        cur = self._start(i, cat_ids)
                        room = self.max_length - len(cur.ids) - 1
                    end = min(len(d.ids), pos + room)
                    self._add(cur, "description", d, pos, end, product.description)
                    cur.ids.append(self.sep_id)
                    cur.type_ids.append(1)
                    if end >= len(d.ids):
                        break
                    # Windows overlap so that no value is cut in two.
                    pos, room = max(end - min(16, room // 2), pos + 1), 0
                out.append(cur)
            else:
                out.append(seq)
        return out

    def _start(self, product: int, cat_ids: list[int]) -> Sequence_:
        seq = Sequence_(product=product)
        # Without the category prefix the text follows [CLS] directly: a category's attributes then come only
        # from the label space at decoding, and each title costs two or three tokens less.
        seq.ids = [self.cls_id, *cat_ids, self.sep_id] if self.category_prefix else [self.cls_id]
        seq.type_ids = [0] * len(seq.ids)
        return seq

    def _add(self, seq: Sequence_, name: TextField, enc: Encoding, start: int, end: int, text: str) -> None:
        """Append tokens start..end of a field; a word cut by a window edge ends at the last token kept."""
        base = len(seq.ids)
        seq.ids.extend(enc.ids[start:end])
        word_ids, offsets = enc.word_ids, enc.offsets
        first_word = len(seq.words)
        for t in range(start, end):
            if t == start or word_ids[t] != word_ids[t - 1]:
                seq.words.append(base + t - start)
                seq.spans.append((name, offsets[t][0], offsets[t][1]))
            else:
                f, s0, _ = seq.spans[-1]
                seq.spans[-1] = (f, s0, offsets[t][1])
        if not self.case_features:
            seq.type_ids.extend([1] * (end - start))
            return
        shapes = [word_shape(text[s:e]) for _, s, e in seq.spans[first_word:]]
        w = -1
        for t in range(start, end):
            if t == start or word_ids[t] != word_ids[t - 1]:
                w += 1
            seq.type_ids.append(shapes[w])

    def pad(self, seqs: Sequence[Sequence_]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """input_ids, attention_mask, token_type_ids padded to the longest sequence."""
        n = max((len(s.ids) for s in seqs), default=0)
        ids = np.full((len(seqs), n), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(seqs), n), dtype=np.int64)
        types = np.zeros((len(seqs), n), dtype=np.int64)
        for r, s in enumerate(seqs):
            ids[r, : len(s.ids)] = s.ids
            mask[r, : len(s.ids)] = 1
            types[r, : len(s.ids)] = s.type_ids
        return ids, mask, types


N_TYPES = 6
"""Token types with case features: 0 category, 1 lower, 2 Capitalised, 3 UPPER, 4 has a digit, 5 other."""


def word_shape(word: str) -> int:
    """Token type id for a word's shape (see N_TYPES)."""
    if any(c.isdigit() for c in word):
        return 4
    letters = [c for c in word if c.isalpha()]
    if not letters:
        return 5
    if all(c.isupper() for c in letters) and len(letters) > 1:
        return 3
    if letters[0].isupper():
        return 2
    return 1


def find_value(text: str, value: str, taken: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Occurrences of `value` in `text` at word boundaries (`shangpin.text`: between Chinese characters too)
    that overlap no span in `taken`.

    Exact case first; case-insensitive only when the exact string is absent.
    """
    value = value.strip()
    if not value:
        return []
    spans: list[tuple[int, int]] = []
    for hay, needle in ((text, value), (text.lower(), value.lower())):
        start = 0
        while (i := hay.find(needle, start)) >= 0:
            j = i + len(needle)
            start = i + 1
            if at_word_boundaries(text, i, j) and not any(i < e and s < j for s, e in taken + spans):
                spans.append((i, j))
        if spans:
            break
    return spans


def gold_spans(product: Product, fields: Sequence[TextField]) -> dict[TextField, list[tuple[int, int, str]]]:
    """Character spans of the product's known attribute values, longest values first, never overlapping.

    One value per attribute is labelled (the longest found, wherever it occurs): labelling every listed value
    (the Chinese NER set lists each product word of a title) scored 1.5 micro-F1 lower there over two seeds
    (docs/BENCHMARKS.md); decoding returns one value per attribute.
    """
    values = [
        (name, v)
        for name, av in product.attributes.items()
        if av is not None
        for v in (av.value, *av.alternatives)
    ]
    values.sort(key=lambda nv: -len(nv[1]))
    out: dict[TextField, list[tuple[int, int, str]]] = {f: [] for f in fields}
    found: set[str] = set()
    for name, value in values:
        if name in found:
            continue
        for f in fields:
            text = product.text(f)
            taken = [(s, e) for s, e, _ in out[f]]
            spans = find_value(text, value, taken)
            out[f].extend((s, e, name) for s, e in spans)
            if spans:
                found.add(name)
    return out


def token_labels(
    seq: Sequence_,
    spans: Mapping[TextField, list[tuple[int, int, str]]],
    label_ids: Mapping[str, int],
    unsure: Sequence[tuple[TextField, int, int]] = (),
) -> list[int]:
    """BIO label on each word's first token; -100 (ignored by the loss) everywhere else, and on words that
    overlap an `unsure` span (field, start, end) and no labelled value: neither "value" nor "no value" is known."""
    labels = [-100] * len(seq.ids)
    prev: tuple[TextField, int, int, str] | None = None
    for pos, (f, s, e) in zip(seq.words, seq.spans, strict=True):
        hit = next(((gs, ge, name) for gs, ge, name in spans.get(f, []) if s < ge and gs < e), None)
        if hit is None and any(uf == f and s < ue and us < e for uf, us, ue in unsure):
            prev = None
            continue
        if hit is None:
            labels[pos] = label_ids["O"]
            prev = None
            continue
        key = (f, hit[0], hit[1], hit[2])
        labels[pos] = label_ids[("I-" if prev == key else "B-") + hit[2]]
        prev = key
    return labels
