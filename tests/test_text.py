"""Word boundaries in Latin and Chinese product text (shangpin.text)."""

from __future__ import annotations

import re

from shangpin.text import ValuesPattern, at_word_boundaries, has_han, joined


def test_ideographs_are_words_of_their_own() -> None:
    assert joined("a", "b") and joined("1", "g")
    assert not joined("茶", "泡") and not joined("g", "美") and not joined("美", "g")
    assert not joined("a", " ") and not joined("-", "b")
    title = "三只松鼠花草茶茶泡袋 150g美妍茶"
    assert at_word_boundaries(title, 4, 7)  # 花草茶 inside an unspaced run
    assert at_word_boundaries(title, 11, 15)  # 150g next to 美
    assert not at_word_boundaries(title, 11, 14)  # "150" would cut "150g"
    assert has_han(title) and not has_han("Red Patent")


def test_values_pattern_matches_at_the_same_boundaries() -> None:
    pattern = ValuesPattern(["Navy Blue", "Navy ", "枸杞茶", "150g", "hello kitty", " "], re.IGNORECASE)
    assert [m.group(0) for m in pattern.finditer("navy blue Navyish NAVY")] == ["navy blue", "NAVY"]
    assert [m.group(0) for m in pattern.finditer("松鼠小美枸杞茶150g美妍茶 1150g")] == ["枸杞茶", "150g"]
    assert pattern.search("特价hello kitty专柜").group(0) == "hello kitty"  # type: ignore[union-attr]
    assert pattern.search("特价hello kittyish") is None
    assert ValuesPattern([]).search("anything") is None and ValuesPattern([]).search("茶") is None


def test_offsets_inside_jieba_words() -> None:
    from shangpin.text import between_han, han_word_insides

    assert han_word_insides("特级酱肉") == {1, 3}  # 特级 / 酱肉
    assert han_word_insides("Navy Blue") == set()
    assert between_han("特级酱肉", 2) and not between_han("150g美", 4) and not between_han("茶", 0)
