"""The contract every channel meets, the neutral form of a webhook request, the splitting of
long replies into messages within a platform's limit, and capped attachment downloads."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import aiohttp
from yarl import URL

from bot.errors import MediaRejected
from bot.messages import Attachment, InboundMessage, OutboundMessage

MAX_REDIRECTS = 5
REDIRECTS = frozenset({301, 302, 303, 307, 308})


@dataclass(frozen=True, slots=True, kw_only=True)
class RawRequest:
    """A webhook request as the platform sent it: public URL, headers, body bytes."""

    url: str
    headers: Mapping[str, str]
    body: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class Ack:
    """What a platform gets back once its webhook's messages are safely stored."""

    content_type: str
    body: bytes


class EventLog(Protocol):
    """The structured-event logger channels are given (bot.logs builds it)."""

    def debug(self, event: str, **fields: Any) -> Any: ...
    def info(self, event: str, **fields: Any) -> Any: ...
    def warning(self, event: str, **fields: Any) -> Any: ...
    def error(self, event: str, **fields: Any) -> Any: ...


class Channel(Protocol):
    """A chat platform: parses its webhooks into messages and delivers replies."""

    name: str
    ack: Ack

    def parse(self, request: RawRequest) -> list[InboundMessage]:
        """Verify and parse one webhook request; raise WebhookAuthError or BadPayload."""
        ...

    async def send(self, message: OutboundMessage) -> None:
        """Deliver a reply; raise ChannelSendError (with `retryable`) when it cannot."""
        ...

    def chunks(self, message: OutboundMessage) -> list[str]:
        """The reply as the platform messages it is sent in, in order (split_text)."""
        ...

    async def send_chunk(self, message: OutboundMessage, chunk: str) -> None:
        """One attempt at one chunk; raise ChannelSendError (`retryable`, `retry_after`)."""
        ...


@runtime_checkable
class StatusReceiver(Protocol):
    """A channel that also takes delivery-status callbacks at /webhooks/<name>/status."""

    def status(self, request: RawRequest) -> None:
        """Verify and record one status callback."""
        ...


# --- Downloading attachments ---------------------------------------------------------------


def same_origin(a: URL, b: URL) -> bool:
    """Same scheme, host and port: where credentials for `a` may also be sent."""
    return (a.scheme, a.host, a.port) == (b.scheme, b.host, b.port)


async def download(
    http: aiohttp.ClientSession,
    url: str,
    *,
    max_bytes: int,
    headers_for: Callable[[URL], Mapping[str, str]] = lambda _: {},
    declared_type: str = "",
) -> Attachment:
    """GET an attachment, following redirects here so each hop's headers (credentials) are
    chosen by `headers_for` for that hop's URL alone; stop reading as soon as the body passes
    `max_bytes`. MediaRejected "too_large" or "fetch_failed" (its message names no URL)."""
    target = URL(url)
    for _ in range(MAX_REDIRECTS + 1):
        try:
            async with http.get(
                target, headers=dict(headers_for(target)), allow_redirects=False
            ) as response:
                if response.status in REDIRECTS and "Location" in response.headers:
                    target = target.join(URL(response.headers["Location"]))
                    continue
                if response.status != 200:
                    raise MediaRejected(
                        f"the download answered HTTP {response.status}", reason="fetch_failed"
                    )
                if (response.content_length or 0) > max_bytes:
                    raise _too_large(max_bytes)
                data = await read_capped(response, max_bytes)
                content_type = response.headers.get("Content-Type", "")
                if not content_type or content_type.startswith("application/octet-stream"):
                    content_type = declared_type or content_type  # file servers often say no more
                return Attachment(content_type=content_type, data=data)
        except (aiohttp.ClientError, ValueError) as exc:  # str(exc) may hold the URL: not kept
            raise MediaRejected(
                f"the download failed ({type(exc).__name__})", reason="fetch_failed"
            ) from None
    raise MediaRejected(f"more than {MAX_REDIRECTS} redirects", reason="fetch_failed")


async def read_capped(response: aiohttp.ClientResponse, max_bytes: int) -> bytes:
    """The body, read in chunks; MediaRejected "too_large" the moment it passes `max_bytes`."""
    data = bytearray()
    async for chunk in response.content.iter_chunked(64 * 1024):
        data += chunk
        if len(data) > max_bytes:
            raise _too_large(max_bytes)
    return bytes(data)


def _too_large(max_bytes: int) -> MediaRejected:
    return MediaRejected(f"the file is over {max_bytes} bytes", reason="too_large")


# --- Splitting long replies into messages ---------------------------------------------------

_PARAGRAPH, _LINE, _SENTENCE, _WORD = range(4)  # kinds of gap, best place to split first
_END = -1  # the end of the text beats every gap
_CJK_ENDS = "\u3002\uff01\uff1f"  # CJK full stop, exclamation and question marks
_SENTENCE_END = re.compile(rf"[.!?…{_CJK_ENDS}][\"'\u201d\u2019)\]»]*$")
_CJK_SENTENCE = re.compile(rf"(?<=[{_CJK_ENDS}])(?=[^{_CJK_ENDS}])")
_NON_SPACE = re.compile(r"\S+")
_FENCE_OPEN = re.compile(r"^[ \t]*(`{3,})[^`\n]*$", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class _Atom:
    """A piece never split unless it alone is too long, with the gap before it."""

    gap: str
    text: str
    rank: int


def split_text(text: str, limit: int, measure: Callable[[str], int] = len) -> list[str]:
    """Split a reply into ordered, non-empty chunks of at most `limit` each.

    Each chunk holds as much as fits, ending at the best gap available: a blank line,
    else a line break, else a sentence end (`. ! ? …` before whitespace, or a CJK one), else
    whitespace; a word longer than `limit` is cut hard. A ``` code fence that fits is never
    split; a longer one is split between lines, each piece closed with ``` and the next
    reopened with the same opening line (a line too long for a piece is cut hard). Chunks
    are stripped at the ends only. `measure` gives a string's size, `len` by default;
    Telegram can pass UTF-16 code units. It must be additive, as both of those are:
    measure(a + b) == measure(a) + measure(b). A limit too small for the fence lines
    splits a fence like plain text, and a character that measures over `limit` alone is
    still sent, alone.
    """
    if limit < 1:
        raise ValueError("limit must be at least 1")
    text = text.strip()
    if not text:
        return []
    if measure(text) <= limit:
        return [text]
    chunks = (chunk.strip() for chunk in _pack(_atoms(text, limit, measure), limit, measure))
    return [chunk for chunk in chunks if chunk]


def _atoms(text: str, limit: int, measure: Callable[[str], int]) -> list[_Atom]:
    """The text as words and whole fences (or fence pieces), each with the gap before it."""
    atoms: list[_Atom] = []
    end = 0
    for start, stop, ticks in _spans(text):
        gap, piece = text[end:start], text[start:stop]
        rank = _gap_rank(gap, atoms[-1].text if atoms else "")
        pieces = [piece]
        if ticks and measure(piece) > limit:
            pieces = _split_fence(piece, ticks, limit, measure) or pieces
        atoms.append(_Atom(gap, pieces[0], rank))
        atoms.extend(_Atom("\n", more, _LINE) for more in pieces[1:])
        end = stop
    return atoms


def _spans(text: str) -> Iterator[tuple[int, int, str]]:
    """(start, stop, fence backticks or "") of each word and each code fence, in order."""
    pos = 0
    while True:
        opening = _FENCE_OPEN.search(text, pos)
        for word in _NON_SPACE.finditer(text, pos, opening.start(1) if opening else len(text)):
            start = word.start()
            for part in _CJK_SENTENCE.split(word.group()):
                yield start, start + len(part), ""
                start += len(part)
        if not opening:
            return
        closing = _closing_fence(opening.group(1)).search(text, opening.end())
        pos = closing.end() if closing else len(text)
        yield opening.start(1), pos, opening.group(1)


def _closing_fence(ticks: str) -> re.Pattern[str]:
    """A line that closes a fence opened with `ticks`."""
    return re.compile(rf"^[ \t]*{ticks}`*[ \t]*$", re.MULTILINE)


def _gap_rank(gap: str, before: str) -> int:
    """How good a place to split the gap after `before` is: lower is better."""
    if re.search(r"\n\s*\n", gap):
        return _PARAGRAPH
    if "\n" in gap:
        return _LINE
    return _SENTENCE if _SENTENCE_END.search(before) else _WORD


def _split_fence(block: str, ticks: str, limit: int, measure: Callable[[str], int]) -> list[str]:
    """A fence as closed, reopened pieces within `limit`; [] when the fence lines leave no room."""
    opening, *body = block.split("\n")
    closing = ticks
    if body and _closing_fence(ticks).fullmatch(body[-1]):
        closing = body.pop().strip()
    head, tail = opening.rstrip() + "\n", "\n" + closing
    room = limit - measure(head) - measure(tail)
    if room < 1:
        return []
    lines = [_Atom("\n", line, _LINE) for line in body]
    return [head + piece + tail for piece in _pack(lines, room, measure)]


def _pack(atoms: list[_Atom], limit: int, measure: Callable[[str], int]) -> list[str]:
    """Greedy chunks of atoms, each ending at the best-ranked gap that fits."""
    atoms = list(atoms)
    chunks: list[str] = []
    i = 0
    while i < len(atoms):
        first = atoms[i]
        size = measure(first.text)
        if size > limit:
            cut = _hard_cut(first.text, limit, measure)
            chunks.append(first.text[:cut])
            if cut < len(first.text):
                atoms[i] = _Atom("", first.text[cut:], first.rank)
            else:
                i += 1
            continue
        best, best_rank, j = i + 1, _rank_after(atoms, i), i + 1
        while j < len(atoms):
            size += measure(atoms[j].gap) + measure(atoms[j].text)
            if size > limit:
                break
            if _rank_after(atoms, j) <= best_rank:
                best, best_rank = j + 1, _rank_after(atoms, j)
            j += 1
        chunks.append(first.text + "".join(a.gap + a.text for a in atoms[i + 1 : best]))
        i = best
    return chunks


def _rank_after(atoms: list[_Atom], i: int) -> int:
    """The rank of the gap after atom `i` (the end of the text ranks best)."""
    return atoms[i + 1].rank if i + 1 < len(atoms) else _END


def _hard_cut(text: str, limit: int, measure: Callable[[str], int]) -> int:
    """How many leading characters of `text` fit in `limit` (at least one)."""
    size = 0
    for count, char in enumerate(text):
        size += measure(char)
        if size > limit:
            return max(count, 1)
    return len(text)
