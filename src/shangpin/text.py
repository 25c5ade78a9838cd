"""Where words begin and end in product text, Latin and Chinese alike.

Chinese titles have no spaces ("三只松鼠花草茶茶泡袋"), and to Python's `\\w` and `\\b` every ideograph is a
letter, so a check for "a value at word boundaries" written with them finds no value inside such a title. The
tokenizers read here (BERT's, with its Chinese-character rule) make each ideograph a word of its own, so this
module does the same: two adjacent characters belong to one word only when both are word characters and neither
is an ideograph.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002a6df\U0002a700-\U0002ceaf\U0002f800-\U0002fa1f"
"""CJK ideographs (the ranges BERT's tokenizer splits into one-character words)."""
_HAN_CHAR = re.compile(f"[{HAN}]")
_JOINING = f"[^\\W{HAN}]"
"""A word character that is not an ideograph: one that joins a neighbouring word character into one word."""
_JOINING_CHAR = re.compile(_JOINING)


def has_han(text: str) -> bool:
    """Whether the text holds a Chinese (CJK) ideograph."""
    return _HAN_CHAR.search(text) is not None


def joined(left: str, right: str) -> bool:
    """Whether two adjacent characters are in the same word (so no value may begin or end between them)."""
    return bool(_JOINING_CHAR.match(left) and _JOINING_CHAR.match(right))


def at_word_boundaries(text: str, start: int, end: int) -> bool:
    """Whether text[start:end] begins and ends at word boundaries (see `joined`)."""
    return (start == 0 or not joined(text[start - 1], text[start])) and (
        end == len(text) or not joined(text[end - 1], text[end])
    )


def values_pattern(values: Iterable[str], flags: int = 0) -> re.Pattern[str]:
    """One regex for any of `values` at word boundaries, in the order given (put longer values first: at one
    position the first alternative that matches wins)."""
    alternatives = []
    for value in values:
        # A value that begins (ends) with an ideograph or a mark has a boundary there whatever is beside it.
        left = f"(?<!{_JOINING})" if _JOINING_CHAR.match(value[:1]) else ""
        right = f"(?!{_JOINING})" if _JOINING_CHAR.match(value[-1:]) else ""
        alternatives.append(f"{left}{re.escape(value)}{right}")
    return re.compile("|".join(alternatives) or "(?!)", flags)
