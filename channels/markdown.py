"""A model's Markdown as each platform shows it: one parse (markdown-it-py), two flavours.

The reply is parsed once into neutral blocks (text lines of styled spans, code blocks), then
written in a platform's own terms: Telegram HTML (`parse_mode: "HTML"`, everything else
escaped) or WhatsApp's markers (`*bold*`, `_italic_`, `~strike~`, `` `code` ``, ``` blocks).
Headings become bold lines, bullets "• " (ordered lists keep their numbers), links `<a href>`
on Telegram (http, https, tg and mailto only) and "text (url)" on WhatsApp.

`chunks` splits a reply between blocks, never inside a tag or a code block: a block too big
for one message is split between its lines (a code block into several closed ones), a line
between words, a word hard. Each chunk is written on its own, so its tags always balance.
Telegram's limit counts the visible text (UTF-16 units), WhatsApp's the text as sent.
The same Markdown always gives the same chunks, so a resumed send repeats them exactly.
Over 400 lines because the parse, both flavours and the chunker share one block model.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from enum import StrEnum
from html.parser import HTMLParser
from typing import Protocol, TypeVar
from urllib.parse import urlsplit

from markdown_it import MarkdownIt
from markdown_it.token import Token

TELEGRAM_SCHEMES = frozenset({"http", "https", "tg", "mailto"})
BULLET = "• "
RULE = "———"
PARAGRAPH_GAP, LINE_GAP = "\n\n", "\n"
_WORDS = re.compile(r"\S+\s*|\s+")
_T = TypeVar("_T")
_PARSER = MarkdownIt("commonmark", {"html": False}).enable("strikethrough")


class Mark(StrEnum):
    """An inline style a span carries."""

    BOLD = "bold"
    ITALIC = "italic"
    STRIKE = "strike"
    CODE = "code"


@dataclass(frozen=True, slots=True)
class Span:
    """A run of text in one style, inside one link (`href`) or none."""

    text: str
    marks: frozenset[Mark] = frozenset()
    href: str = ""


@dataclass(frozen=True, slots=True)
class Line:
    """One line of a text block: a list marker or indent, then spans."""

    spans: tuple[Span, ...]
    prefix: str = ""


@dataclass(frozen=True, slots=True)
class TextBlock:
    """Paragraph-like lines; `gap` is what separates it from the block before."""

    lines: tuple[Line, ...]
    quote: bool = False
    gap: str = PARAGRAPH_GAP


@dataclass(frozen=True, slots=True)
class CodeBlock:
    """A fenced or indented code block, shown as it is."""

    code: str
    language: str = ""
    quote: bool = False
    gap: str = PARAGRAPH_GAP


Block = TextBlock | CodeBlock


class Flavour(Protocol):
    """How one platform writes blocks, and how it counts a message's size."""

    def line(self, line: Line, quote: bool) -> str: ...
    def code(self, block: CodeBlock) -> str: ...
    def wrap(self, block: TextBlock, lines: list[str]) -> str: ...
    def size(self, written: str, plain: str) -> int: ...


# --- Parsing ---------------------------------------------------------------------------------


def parse(markdown: str) -> list[Block]:
    """The reply's blocks, in order (empty ones dropped)."""
    return list(_Walker().walk(_PARSER.parse(markdown)))


class _Walker:
    """Turns markdown-it's flat token stream into blocks."""

    def __init__(self) -> None:
        self.quote = 0
        self.lists: list[list[int | None]] = []  # per open list: [next number] or [None]
        self.marker = ""  # the marker the next line of a list item starts with
        self.in_list = False  # a block of this list was already written

    def walk(self, tokens: list[Token]) -> Iterator[Block]:
        bold = False
        for token in tokens:
            kind = token.type
            if kind == "blockquote_open":
                self.quote += 1
            elif kind == "blockquote_close":
                self.quote -= 1
            elif kind in ("bullet_list_open", "ordered_list_open"):
                start = token.attrs.get("start", 1) if kind == "ordered_list_open" else None
                self.lists.append([int(start) if start is not None else None])
            elif kind in ("bullet_list_close", "ordered_list_close"):
                self.lists.pop()
                if not self.lists:
                    self.in_list = False
            elif kind == "list_item_open":
                number = self.lists[-1][0]
                if token.info.isdigit():
                    number = int(token.info)
                self.marker = BULLET if number is None else f"{number}. "
                if number is not None:
                    self.lists[-1][0] = number + 1
            elif kind == "heading_open":
                bold = True
            elif kind == "heading_close":
                bold = False
            elif kind == "inline":
                lines = _lines(token.children or [], bold=bold)
                if lines:
                    yield self._text(lines)
            elif kind in ("fence", "code_block"):
                code = token.content.rstrip("\n")
                if code.strip():
                    language = token.info.split()[0] if token.info.strip() else ""
                    yield CodeBlock(code, language, self.quote > 0, self._gap())
            elif kind == "hr":
                yield self._text([[Span(RULE)]])

    def _gap(self) -> str:
        if not self.lists:
            return PARAGRAPH_GAP
        gap = LINE_GAP if self.in_list else PARAGRAPH_GAP
        self.in_list = True
        return gap

    def _text(self, lines: list[list[Span]]) -> TextBlock:
        depth = len(self.lists)
        indent = "  " * max(depth - 1, 0)
        first = indent + self.marker if self.marker else "  " * depth
        self.marker = ""
        rest = "  " * depth
        built = tuple(
            Line(tuple(spans), first if n == 0 else rest) for n, spans in enumerate(lines)
        )
        return TextBlock(built, self.quote > 0, self._gap())


def _lines(children: list[Token], *, bold: bool) -> list[list[Span]]:
    """An inline token's children as lines of spans (soft and hard breaks end a line)."""
    marks: set[Mark] = {Mark.BOLD} if bold else set()
    href = ""
    lines: list[list[Span]] = [[]]
    toggles = {"strong": Mark.BOLD, "em": Mark.ITALIC, "s": Mark.STRIKE}

    def add(text: str, extra: frozenset[Mark] = frozenset()) -> None:
        if text:
            lines[-1].append(Span(text, frozenset(marks) | extra, href))

    for child in children:
        kind = child.type
        name, _, edge = kind.rpartition("_")
        if name in toggles and edge in ("open", "close"):
            (marks.add if edge == "open" else marks.discard)(toggles[name])
        elif kind == "text":
            add(child.content)
        elif kind == "code_inline":
            add(child.content, frozenset({Mark.CODE}))
        elif kind in ("softbreak", "hardbreak"):
            lines.append([])
        elif kind == "link_open":
            href = str(child.attrs.get("href", ""))
        elif kind == "link_close":
            href = ""
        elif kind == "image":
            outer, href = href, str(child.attrs.get("src", ""))
            add(child.content or href)
            href = outer
        else:
            add(child.content)
    return [line for line in lines if any(span.text.strip() for span in line)]


# --- Writing: Telegram HTML ------------------------------------------------------------------

_TAGS = ((Mark.BOLD, "b"), (Mark.ITALIC, "i"), (Mark.STRIKE, "s"), (Mark.CODE, "code"))


def _groups(spans: tuple[Span, ...]) -> Iterator[tuple[str, list[Span]]]:
    """Consecutive spans of one link (href, spans), each run merged by style."""
    run: list[Span] = []
    for span in spans:
        if run and run[-1].href == span.href and run[-1].marks == span.marks:
            run[-1] = replace(run[-1], text=run[-1].text + span.text)
            continue
        if run and run[-1].href != span.href:
            yield run[-1].href, run
            run = []
        run.append(span)
    if run:
        yield run[-1].href, run


def safe_href(href: str) -> bool:
    """Whether Telegram may be given `href` as a link (http, https, tg, mailto only)."""
    try:
        return urlsplit(href).scheme.lower() in TELEGRAM_SCHEMES
    except ValueError:
        return False


class TelegramHTML:
    """Telegram's HTML parse mode; the size is the visible text in UTF-16 units."""

    def line(self, line: Line, quote: bool) -> str:
        out = [html.escape(line.prefix, quote=False)]
        for href, run in _groups(line.spans):
            inner = "".join(self._span(span) for span in run)
            if href and safe_href(href):
                inner = f'<a href="{html.escape(href, quote=True)}">{inner}</a>'
            out.append(inner)
        return "".join(out)

    @staticmethod
    def _span(span: Span) -> str:
        text = html.escape(span.text, quote=False)
        for mark, tag in reversed(_TAGS):
            if mark in span.marks:
                text = f"<{tag}>{text}</{tag}>"
        return text

    def code(self, block: CodeBlock) -> str:
        code = html.escape(block.code, quote=False)
        if block.language:
            language = html.escape(block.language, quote=True)
            code = f'<pre><code class="language-{language}">{code}</code></pre>'
        else:
            code = f"<pre>{code}</pre>"
        return f"<blockquote>{code}</blockquote>" if block.quote else code

    def wrap(self, block: TextBlock, lines: list[str]) -> str:
        text = "\n".join(lines)
        return f"<blockquote>{text}</blockquote>" if block.quote else text

    def size(self, written: str, plain: str) -> int:
        return len(plain.encode("utf-16-le")) // 2


# --- Writing: WhatsApp markers ---------------------------------------------------------------

_MARKERS = ((Mark.BOLD, "*"), (Mark.ITALIC, "_"), (Mark.STRIKE, "~"))


class WhatsAppMarkers:
    """WhatsApp's own markers; the size is the text as sent."""

    def line(self, line: Line, quote: bool) -> str:
        out = ["> " if quote else "", line.prefix]
        for href, run in _groups(line.spans):
            out.extend(self._span(span) for span in run)
            shown = "".join(span.text for span in run).strip()
            if href and shown not in (href, href.removeprefix("mailto:")):
                out.append(f" ({href})")
        return "".join(out)

    @staticmethod
    def _span(span: Span) -> str:
        body = span.text.strip()
        if not body:
            return span.text
        lead = span.text[: len(span.text) - len(span.text.lstrip())]
        trail = span.text[len(span.text.rstrip()) :]
        if Mark.CODE in span.marks:
            body = f"`{body}`"
        for mark, marker in reversed(_MARKERS):
            if mark in span.marks:
                body = f"{marker}{body}{marker}"
        return lead + body + trail

    def code(self, block: CodeBlock) -> str:
        return f"```\n{block.code}\n```"

    def wrap(self, block: TextBlock, lines: list[str]) -> str:
        return "\n".join(lines)

    def size(self, written: str, plain: str) -> int:
        return len(written)


TELEGRAM = TelegramHTML()
WHATSAPP = WhatsAppMarkers()


# --- Writing and chunking --------------------------------------------------------------------


def _plain_line(line: Line) -> str:
    return line.prefix + "".join(span.text for span in line.spans)


def write(block: Block, flavour: Flavour) -> str:
    """One block in a flavour's terms."""
    if isinstance(block, CodeBlock):
        return flavour.code(block)
    return flavour.wrap(block, [flavour.line(line, block.quote) for line in block.lines])


def _size(block: Block, flavour: Flavour) -> int:
    plain = (
        block.code
        if isinstance(block, CodeBlock)
        else "\n".join(_plain_line(line) for line in block.lines)
    )
    return flavour.size(write(block, flavour), plain)


def render(markdown: str, flavour: Flavour) -> str:
    """The whole reply in a flavour's terms, as one text."""
    return _join(parse(markdown), flavour)


def chunks(markdown: str, flavour: Flavour, limit: int) -> list[str]:
    """The reply as messages of at most `limit` (as `flavour` counts), split between blocks,
    never inside a tag or a code block; [] for a reply with nothing to show."""
    if limit < 1:
        raise ValueError("limit must be at least 1")
    units = [piece for block in parse(markdown) for piece in _fit(block, flavour, limit)]
    out: list[str] = []
    start = 0
    while start < len(units):
        size, end, best = _size(units[start], flavour), start + 1, 0
        while end < len(units):
            size += flavour.size(units[end].gap, units[end].gap) + _size(units[end], flavour)
            if size > limit:
                break
            if units[end].gap == PARAGRAPH_GAP:
                best = end
            end += 1
        if end < len(units) and best > start:
            end = best  # over the limit: end at the last paragraph gap that fits
        out.append(_join(units[start:end], flavour))
        start = end
    return [chunk for chunk in out if chunk.strip()]


def _join(blocks: list[Block], flavour: Flavour) -> str:
    parts = [write(block, flavour) for block in blocks]
    return "".join(
        (block.gap if n else "") + part
        for n, (block, part) in enumerate(zip(blocks, parts, strict=True))
    )


def _fit(block: Block, flavour: Flavour, limit: int) -> list[Block]:
    """`block` as blocks that each fit in `limit`: split between lines, then words."""
    if _size(block, flavour) <= limit:
        return [block]
    if isinstance(block, CodeBlock):
        room = max(1, limit - _size(replace(block, code=""), flavour))
        rows = [piece for row in block.code.split("\n") for piece in _cut(row, room, flavour)]
        codes = _pack(rows, room, lambda text: flavour.size(text, text), "\n")
        return [
            replace(block, code="\n".join(code), gap=block.gap if n == 0 else LINE_GAP)
            for n, code in enumerate(codes)
        ]
    lines = [piece for line in block.lines for piece in _split_line(line, block, flavour, limit)]

    def line_size(line: Line) -> int:
        return _size(replace(block, lines=(line,)), flavour)

    groups = _pack(lines, limit, line_size, "\n")
    return [
        replace(block, lines=tuple(group), gap=block.gap if n == 0 else LINE_GAP)
        for n, group in enumerate(groups)
    ]


def _split_line(line: Line, block: TextBlock, flavour: Flavour, limit: int) -> list[Line]:
    """A line too long for one message as lines between words (a word too long, cut hard)."""

    def size(spans: tuple[Span, ...], prefix: str) -> int:
        return _size(replace(block, lines=(Line(spans, prefix),)), flavour)

    if size(line.spans, line.prefix) <= limit:
        return [line]
    words: list[Span] = []
    for span in line.spans:
        for word in _WORDS.findall(span.text):
            room = max(1, limit - size((), line.prefix) - 2)  # room for markers, roughly
            words.extend(replace(span, text=piece) for piece in _cut(word, room, flavour))
    groups = _pack(words, limit, lambda word: size((word,), ""), "", first=size((), line.prefix))
    pieces = []
    for n, group in enumerate(groups):
        spans = list(group)
        spans[0] = replace(spans[0], text=spans[0].text.lstrip())
        spans[-1] = replace(spans[-1], text=spans[-1].text.rstrip())
        pieces.append(Line(tuple(s for s in spans if s.text), line.prefix if n == 0 else ""))
    return pieces


def _cut(text: str, room: int, flavour: Flavour) -> list[str]:
    """`text` in pieces of at most `room` (at least one character each)."""
    pieces, start, size = [], 0, 0
    for n, char in enumerate(text):
        width = flavour.size(char, char)
        if size + width > room and n > start:
            pieces.append(text[start:n])
            start, size = n, 0
        size += width
    pieces.append(text[start:])
    return pieces


def _pack(
    items: list[_T], limit: int, size: Callable[[_T], int], joint: str, *, first: int = 0
) -> list[list[_T]]:
    """Greedy groups of items whose sizes (plus a joint between each) stay within `limit`;
    `first` is what the first group already holds."""
    groups: list[list[_T]] = []
    used = first
    for item in items:
        width = size(item)
        if groups and groups[-1] and used + len(joint) + width <= limit:
            groups[-1].append(item)
            used += len(joint) + width
        else:
            groups.append([item])
            used = width + (first if len(groups) == 1 else 0)
    return groups


# --- Plain text ------------------------------------------------------------------------------


class _Visible(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


def visible_text(written: str) -> str:
    """What a person sees of our Telegram HTML: the text without tags, entities decoded."""
    parser = _Visible()
    parser.feed(written)
    parser.close()
    return "".join(parser.parts)
