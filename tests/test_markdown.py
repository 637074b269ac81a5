"""channels.markdown: one parse of a reply's Markdown, written as Telegram HTML or WhatsApp
markers, and split into messages between blocks, never inside a tag or a code block."""

from __future__ import annotations

import pytest

from channels.markdown import TELEGRAM, WHATSAPP, chunks, render, visible_text
from tests.fakes.telegram_server import parse_html

ANSWER = """## Status
**Status:** _fine_ & ~~broken~~ <ok>, see [the docs](https://example.com/a?b=1&c=2).

- one `x<y`
- two

1. first
2. second

> quoted

```python
print("<b>")
```"""


def test_telegram_html_writes_each_construct_in_its_own_tag() -> None:
    """Headings bold, bullets "• ", numbers kept, b/i/s, a href, code, pre, blockquote; the
    rest escaped, and Telegram's parser accepts it."""
    written = render(ANSWER, TELEGRAM)
    assert written == (
        "<b>Status</b>\n\n"
        "<b>Status:</b> <i>fine</i> &amp; <s>broken</s> &lt;ok&gt;, see "
        '<a href="https://example.com/a?b=1&amp;c=2">the docs</a>.\n\n'
        "• one <code>x&lt;y</code>\n• two\n\n"
        "1. first\n2. second\n\n"
        "<blockquote>quoted</blockquote>\n\n"
        '<pre><code class="language-python">print("&lt;b&gt;")</code></pre>'
    )
    assert parse_html(written).startswith("Status\n\nStatus: fine & broken <ok>, see the docs.")


def test_whatsapp_uses_its_own_markers_and_shows_links_as_text_and_url() -> None:
    """WhatsApp gets *bold*, _italic_, ~strike~, `code`, ``` blocks and "text (url)"."""
    written = render(ANSWER, WHATSAPP)
    assert written == (
        "*Status*\n\n"
        "*Status:* _fine_ & ~broken~ <ok>, see the docs (https://example.com/a?b=1&c=2).\n\n"
        "• one `x<y`\n• two\n\n"
        "1. first\n2. second\n\n"
        "> quoted\n\n"
        '```\nprint("<b>")\n```'
    )


@pytest.mark.parametrize("href", ["ftp://example.com/f", "ssh://host/x", "intent://scan"])
def test_telegram_links_only_to_safe_schemes(href: str) -> None:
    """A link to anything but http, https, tg or mailto is shown as its text, not an <a>."""
    written = render(f"[click](<{href}>) and [mail](mailto:a@example.com)", TELEGRAM)
    assert "<a href" in written
    assert href not in written
    assert written.startswith("click and ")


def test_a_long_code_block_becomes_several_closed_blocks() -> None:
    """A code block longer than a message is split between lines, each piece a whole block."""
    code = "\n".join(f"line {n} <&>" for n in range(60))
    for flavour in (TELEGRAM, WHATSAPP):
        parts = chunks(f"Intro.\n\n```sh\n{code}\n```", flavour, 200)
        assert len(parts) > 3
        pieces = parts[1:] if parts[0] == "Intro." else parts
        for part in pieces:
            if flavour is TELEGRAM:
                assert part.startswith('<pre><code class="language-sh">')
                assert part.endswith("</code></pre>")
                assert len(parse_html(part)) <= 200
            else:
                assert part.startswith("```\n")
                assert part.endswith("\n```")
                assert len(part) <= 200
        shown = [visible_text(p) if flavour is TELEGRAM else p.strip("`\n") for p in pieces]
        assert "\n".join(shown).removeprefix("Intro.\n") == code.replace("<&>", "<&>")


def test_telegram_counts_the_visible_text_not_the_markup() -> None:
    """Markup does not count against Telegram's limit: 90 visible characters in bold tags
    are one message at a limit of 100, though the HTML is longer."""
    text = " ".join(["**bold**"] * 18)  # 18 * 4 + 17 = 89 visible
    [part] = chunks(text, TELEGRAM, 100)
    assert len(part) > 100
    assert len(parse_html(part)) <= 100


def test_a_split_paragraph_keeps_every_tag_balanced() -> None:
    """A bold paragraph longer than a message is split between words, each piece closing its
    tags; every chunk passes Telegram's parser and fits the limit."""
    words = " ".join(f"w{n}" for n in range(200))
    text = f"Lead.\n\n**{words}** and [a link](https://example.com) `code here`"
    parts = chunks(text, TELEGRAM, 120)
    assert len(parts) > 5
    for part in parts:
        assert len(parse_html(part)) <= 120
    assert " ".join(visible_text(p) for p in parts).split() == (
        f"Lead. {words} and a link code here".split()
    )


def test_chunks_end_between_blocks_when_one_fits() -> None:
    """Two paragraphs that do not fit together become two messages, each whole."""
    first, second = "a " * 40, "b " * 40
    assert chunks(f"{first}\n\n{second}", WHATSAPP, 100) == [first.strip(), second.strip()]


def test_an_empty_reply_has_no_chunks() -> None:
    """Whitespace alone (or nothing) gives no message at all."""
    assert chunks("  \n\n ", TELEGRAM, 100) == []
