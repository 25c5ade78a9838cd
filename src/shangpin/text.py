"""Where words begin and end in product text, Latin and Chinese alike.

Chinese titles have no spaces ("三只松鼠花草茶茶泡袋"), and to Python's `\\w` and `\\b` every ideograph is a
letter, so a check for "a value at word boundaries" written with them finds no value inside such a title. The
tokenizers read here (BERT's, with its Chinese-character rule) make each ideograph a word of its own, so this
module does the same: two adjacent characters belong to one word only when both are word characters and neither
is an ideograph.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator
from functools import lru_cache
from typing import Any

from shangpin.errors import ConfigError

HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
"""CJK ideographs of the Basic Multilingual Plane, which BERT's tokenizer splits into one-character words. The
rare ideographs beyond it (extensions B-F) are left out: a character class with those ranges takes Python's regex
compiler milliseconds per pattern, and the dictionary fallback compiles one per category and attribute."""
_HAN_CHAR = re.compile(f"[{HAN}]")
_HAN_RUN = re.compile(f"[{HAN}]+")
_JOINING = f"[^\\W{HAN}]"
"""A word character that is not an ideograph: one that joins a neighbouring word character into one word."""
_JOINING_CHAR = re.compile(_JOINING)


@lru_cache(maxsize=1)
def jieba() -> Any:
    """The jieba module (Chinese word segmentation), imported on first use."""
    try:
        import jieba as module
    except ImportError:
        raise ConfigError("Chinese text needs the package jieba; run 'pip install jieba'") from None
    module.setLogLevel(logging.WARNING)
    return module


def han_word_insides(text: str) -> set[int]:
    """Offsets that fall between two ideographs of one jieba word ("特级酱肉", cut 特级/酱肉, gives {1, 3});
    empty for text without ideographs."""
    out: set[int] = set()
    if not has_han(text):
        return out
    pos = 0
    for word in jieba().cut(text):
        if len(word) > 1:
            if _HAN_RUN.fullmatch(word):
                out.update(range(pos + 1, pos + len(word)))
            else:
                out.update(pos + k for k in range(1, len(word)) if _HAN_RUN.fullmatch(word, k - 1, k + 1))
        pos += len(word)
    return out


def between_han(text: str, at: int) -> bool:
    """Whether offset `at` falls between two ideographs."""
    return 0 < at < len(text) and _HAN_RUN.fullmatch(text, at - 1, at + 1) is not None


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


class ValuesPattern:
    """Finds any of `values` (stripped of surrounding spaces) at word boundaries, in the order given (put longer
    values first: at one position the first alternative that matches wins).

    Text without ideographs is searched with a plain `(?<!\\w)(?:...)(?!\\w)` regex. Text with them needs
    guards that know the ideograph ranges, and a character class holding those ranges takes Python's regex
    compiler over a millisecond each time (the dictionary fallback compiles a pattern per category and
    attribute), so that regex is compiled on the first text that needs it.
    """

    def __init__(self, values: Iterable[str], flags: int = 0) -> None:
        self.body = "|".join(dict.fromkeys(re.escape(v.strip()) for v in values if v.strip())) or "(?!)"
        self.flags = flags
        self.plain = re.compile(rf"(?<!\w)(?:{self.body})(?!\w)", flags)
        self._han: re.Pattern[str] | None = None

    def regex(self, text: str) -> re.Pattern[str]:
        """The regex that reads `text`."""
        if not has_han(text):
            return self.plain
        if self._han is None:
            # A boundary lies before position i unless the characters on both sides join (see `joined`);
            # likewise after the match. Values never begin or end with a space, so the guard passes where the
            # character inside the value is a mark or an ideograph (not merely non-joining, which spaces are).
            # The guards are case-sensitive whatever `flags` say: case-folding the ranges is slower still.
            inner = f"[^\\s\\w]|[{HAN}]"
            left = f"(?-i:(?<!{_JOINING})|(?={inner}))"
            right = f"(?-i:(?!{_JOINING})|(?<={inner}))"
            self._han = re.compile(f"{left}(?:{self.body}){right}", self.flags)
        return self._han

    def search(self, text: str) -> re.Match[str] | None:
        return self.regex(text).search(text)

    def finditer(self, text: str) -> Iterator[re.Match[str]]:
        return self.regex(text).finditer(text)
