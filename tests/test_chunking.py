"""split_text: long replies become ordered chunks within a channel's size limit."""

from __future__ import annotations

import random
import re
from collections.abc import Callable

import pytest

from channels.base import split_text

FENCE_LINE = re.compile(r"^[ \t]*`{3,}[^`\n]*$", re.MULTILINE)
WORDS = ["the", "model", "said", "that", "redis", "keeps", "each", "chat", "apart", "and"]
WORDS += ["replies", "arrive", "in", "order"]
BANG, QUERY = "\uff01", "\uff1f"  # CJK full-width exclamation and question marks
CJK = f"中文句子。第二句{BANG}第三句{QUERY}最后"


def utf16(text: str) -> int:
    """Telegram's measure: UTF-16 code units."""
    return len(text.encode("utf-16-le")) // 2


def squash(text: str) -> str:
    """The text without whitespace: what a reader must still get, in order."""
    return "".join(text.split())


def without_fence_lines(text: str) -> str:
    """The text with every ``` line removed, so added closing and reopening lines don't count."""
    return FENCE_LINE.sub("", text)


def paragraphs(rng: random.Random, total: int) -> str:
    """Paragraphs of sentences of plain words, about `total` characters long."""
    parts: list[str] = []
    while sum(len(part) + 2 for part in parts) < total:
        sentences = (
            " ".join(rng.choices(WORDS, k=rng.randint(3, 12))).capitalize() + rng.choice(".!?")
            for _ in range(rng.randint(1, 6))
        )
        parts.append(" ".join(sentences))
    return "\n\n".join(parts)


def assert_invariants(
    text: str, chunks: list[str], limit: int, measure: Callable[[str], int] = len
) -> None:
    """Every chunk is non-empty, stripped, within the limit; the content survives in order."""
    assert all(chunks)
    assert all(chunk == chunk.strip() for chunk in chunks)
    assert all(measure(chunk) <= limit for chunk in chunks), [measure(c) for c in chunks]
    joined = "\n".join(without_fence_lines(chunk) for chunk in chunks)
    assert squash(joined) == squash(without_fence_lines(text))


def test_short_text_is_one_stripped_chunk() -> None:
    """A reply within the limit is sent as it is, stripped at the ends only."""
    text = "  Hello!\n\n  Indented line\n"
    assert split_text(text, 1600) == ["Hello!\n\n  Indented line"]


def test_exactly_the_limit_is_one_chunk() -> None:
    """A reply exactly as long as the limit is not split."""
    assert split_text("a" * 10, 10) == ["a" * 10]


@pytest.mark.parametrize("text", ["", "   ", "\n\n\t\n"])
def test_empty_text_gives_no_chunks(text: str) -> None:
    """An empty or blank reply gives nothing to send."""
    assert split_text(text, 1600) == []


def test_limit_below_one_is_refused() -> None:
    """A limit under one character cannot hold anything and is refused."""
    with pytest.raises(ValueError, match="limit"):
        split_text("hello", 0)


def test_long_reply_of_paragraphs_fits_whatsapp() -> None:
    """A 5,000-character reply becomes ordered chunks of at most 1600, split between paragraphs."""
    text = paragraphs(random.Random(1), 5000)
    assert len(text) >= 5000
    chunks = split_text(text, 1600)
    assert len(chunks) >= 4
    assert_invariants(text, chunks, 1600)
    assert " ".join(chunks).split() == text.split()
    assert all(f"{chunk}\n\n" in f"{text}\n\n" for chunk in chunks)


def test_paragraph_break_is_preferred_over_sentence_end() -> None:
    """A blank line is the split point even when a later sentence end would also fit."""
    text = "First paragraph.\n\nSecond one. It goes on and on for a while."
    expected = ["First paragraph.", "Second one. It goes on and on for a while."]
    assert split_text(text, 45) == expected


def test_line_break_is_preferred_over_sentence_end() -> None:
    """Within a paragraph, a line break beats a later sentence end."""
    text = "- first item\n- second item. More words follow here"
    assert split_text(text, 40) == ["- first item", "- second item. More words follow here"]


def test_sentence_end_is_preferred_over_word_boundary() -> None:
    """Without line breaks, the chunk ends after the last whole sentence that fits."""
    text = "One short sentence. Then a much longer sentence that cannot fit"
    expected = ["One short sentence.", "Then a much longer sentence that cannot fit"]
    assert split_text(text, 45) == expected


def test_word_boundary_when_there_is_no_sentence_end() -> None:
    """A long run-on sentence is split between words, never inside one."""
    text = " ".join(["word"] * 30)
    chunks = split_text(text, 22)
    assert chunks == ["word word word word"] * 7 + ["word word"]


def test_cjk_sentence_ends_are_split_points() -> None:
    """CJK text without spaces is split after its sentence marks rather than mid-sentence."""
    assert split_text(CJK, 6) == ["中文句子。", f"第二句{BANG}", f"第三句{QUERY}最后"]


def test_single_long_word_is_cut_hard() -> None:
    """A 3,000-character word is cut into pieces within the limit, losing nothing."""
    word = "".join(random.Random(2).choices("abcdef", k=3000))
    chunks = split_text(word, 1600)
    assert [len(chunk) for chunk in chunks] == [1600, 1400]
    assert "".join(chunks) == word


def test_rest_of_a_cut_word_shares_a_chunk_with_what_follows() -> None:
    """After a hard cut, the rest of the word is packed with the next words."""
    assert split_text("x" * 25 + " and more", 20) == ["x" * 20, "xxxxx and more"]


def test_fitting_code_fence_moves_whole_to_the_next_chunk() -> None:
    """A code fence that fits the limit is never split, even if the chunk before ends early."""
    code = "```python\ndef f():\n    return 1\n```"
    text = f"Intro words here.\nMore intro.\n{code}\nAfter."
    chunks = split_text(text, len(code) + 8)
    assert code in chunks[1]
    assert chunks == ["Intro words here.\nMore intro.", f"{code}\nAfter."]


def test_oversized_fence_is_split_with_reopened_fences() -> None:
    """A fence longer than the limit is split between lines, each piece closed and reopened."""
    body = "\n".join(f"    value_{i} = compute({i})" for i in range(60))
    text = f"Here is the code:\n\n```python\n{body}\n```\n\nThat is all."
    chunks = split_text(text, 300)
    assert len(chunks) > 3
    assert_invariants(text, chunks, 300)
    code_chunks = [chunk for chunk in chunks if "```" in chunk]
    for chunk in code_chunks:
        fences = FENCE_LINE.findall(chunk)
        assert len(fences) % 2 == 0
        assert fences[0].strip() == "```python"
        assert fences[-1].strip() == "```"
    assert "    value_0 = compute(0)" in code_chunks[0]
    kept = [line for chunk in code_chunks for line in chunk.split("\n") if "value_" in line]
    assert kept == body.split("\n")


def test_oversized_unclosed_fence_gets_closed() -> None:
    """An unclosed fence longer than the limit is still sent as closed pieces."""
    text = "```\n" + "\n".join(f"line {i}" for i in range(40))
    chunks = split_text(text, 50)
    assert all(chunk.startswith("```\n") and chunk.endswith("\n```") for chunk in chunks)
    assert_invariants(text, chunks, 50)


def test_two_short_paragraphs_share_a_chunk() -> None:
    """Greedy packing: short paragraphs share one chunk while they fit."""
    text = "First paragraph.\n\nSecond paragraph.\n\n" + "Third. " * 10
    chunks = split_text(text, 60)
    assert chunks[0] == "First paragraph.\n\nSecond paragraph."
    assert_invariants(text, chunks, 60)


def test_custom_measure_counts_utf16_code_units() -> None:
    """With a UTF-16 measure, emoji count twice and every chunk fits Telegram's count."""
    text = " ".join(["😀🎉"] * 40)
    assert len(split_text(text, 120)) == 1
    chunks = split_text(text, 120, measure=utf16)
    assert len(chunks) == 2
    assert_invariants(text, chunks, 120, measure=utf16)
    assert max(utf16(chunk) for chunk in chunks) <= 120


def test_custom_measure_hard_cut_keeps_emoji_whole() -> None:
    """A hard cut under a UTF-16 measure never exceeds the limit with a half-counted emoji."""
    chunks = split_text("😀" * 25, 9, measure=utf16)
    assert chunks == ["😀" * 4] * 6 + ["😀"]


def random_text(rng: random.Random) -> str:
    """A reply mixing words, sentences, line breaks, blank lines, long words and fences."""
    parts: list[str] = []
    for _ in range(rng.randint(1, 40)):
        roll = rng.random()
        if roll < 0.5:
            parts.append(rng.choice(WORDS) + rng.choice(["", "", ".", "!", "?", ",", "…"]))
        elif roll < 0.65:
            parts.append(rng.choice(["\n", "\n\n", "\n\n\n", "  \n  "]))
        elif roll < 0.75:
            parts.append("".join(rng.choices("xyz", k=rng.randint(20, 200))))
        elif roll < 0.8:
            parts.append(CJK)
        else:
            tag = rng.choice(["", "python", "js"])
            lines = [" " * rng.choice([0, 4]) + " ".join(rng.choices(WORDS, k=rng.randint(0, 8)))]
            lines += [rng.choice(WORDS) * rng.randint(1, 4) for _ in range(rng.randint(0, 12))]
            parts.append("\n```" + tag + "\n" + "\n".join(lines) + "\n```\n")
    return "".join(rng.choice([" ", ""]) + part for part in parts)


def test_random_texts_keep_the_invariants() -> None:
    """Hundreds of random replies: chunks are non-empty, within limit, balanced, complete."""
    rng = random.Random(0)
    for _ in range(400):
        text = random_text(rng)
        limit = rng.randint(40, 400)
        chunks = split_text(text, limit)
        assert_invariants(text, chunks, limit)
        for chunk in chunks:
            assert len(FENCE_LINE.findall(chunk)) % 2 == 0, (text, limit, chunk)
        if "```" not in text and max(map(len, text.split()), default=0) <= limit:
            assert " ".join(chunks).split() == text.split()
