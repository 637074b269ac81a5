"""A turn's attachments: fetched by the channel that holds the credentials, capped in size,
pictures kept for a vision model, voice notes and contact cards (vCard) turned into text.

The core sees bytes and a content type, never a platform URL: a message's `media` entries are
opaque to it and go back to their channel's fetcher. Memory keeps short notes ("[picture]",
"[voice note] …"), never bytes. URLs, bytes and transcripts never reach the logs (a transcript
only as `text`, which logging drops unless `logging.includeContent`).
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from bot.errors import MediaRejected, ModelError, ModelUnavailable
from bot.llm.types import ModelRef, Transcript, Usage
from bot.logs import Logger
from bot.messages import Attachment, InboundMessage
from bot.usage import CallKind, estimate

# What vision models take inline (OpenAI, LM Studio and llama.cpp builds agree on these).
IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/webp", "image/gif"})
CONTACT_TYPES = frozenset({"text/vcard", "text/x-vcard", "text/directory"})  # a contact card
PICTURE = "[picture]"
VOICE_NOTE = "[voice note]"
NO_VISION = "None of the models here can see pictures; please describe it in words."
NO_EARS = "I can't listen to voice notes here; please type your message."
NOT_HEARD = "Sorry, I couldn't make out that voice note. Please try again, or type it."
UNSUPPORTED = "I can only read text, pictures and voice notes, not that kind of file."
FETCH_FAILED = "Sorry, I couldn't download that attachment. Please send it again."
TOO_SLOW = "Sorry, that attachment took too long to download. Please send it again."


MAX_CARDS = 5  # contacts shown from one vCard file
MAX_NUMBERS = 3  # phone numbers shown per contact
_FOLD = re.compile(r"\r?\n[ \t]")  # a vCard line continued on the next
_SPACE = re.compile(r"\s+")


def _vcard_value(value: str, limit: int = 80) -> str:
    """A vCard property value, unescaped, on one line, cut to `limit` characters."""
    for escaped, plain in (("\\n", " "), ("\\N", " "), ("\\,", ","), ("\\;", ";")):
        value = value.replace(escaped, plain)
    flat = _SPACE.sub(" ", value.replace("\\\\", "\\")).strip()
    flat = flat.replace("[", "(").replace("]", ")")
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"


def contact_cards(data: bytes) -> str:
    """A vCard file (WhatsApp's shared contacts) as one line per contact: "[contact: Name,
    +1 555 0100]", with the numbers the person chose to share, a few contacts at most."""
    cards: list[tuple[str, list[str]]] = []
    name, numbers, inside = "", list[str](), False
    for line in _FOLD.sub("", data.decode("utf-8", errors="replace")).splitlines():
        field, _, value = line.partition(":")
        key = field.split(";")[0].rpartition(".")[2].strip().upper()  # item1.TEL → TEL
        if key == "BEGIN":
            name, numbers, inside = "", [], True
        elif key == "END" and inside:
            cards.append((name, numbers))
            inside = False
        elif inside and key == "FN":
            name = _vcard_value(value)
        elif inside and key == "N" and not name:
            family, given, *more = [*value.split(";"), "", ""]
            name = _vcard_value(" ".join(p for p in (given, more[0], family) if p))
        elif inside and key == "TEL" and len(numbers) < MAX_NUMBERS:
            numbers.append(_vcard_value(value.removeprefix("tel:"), 32))
    lines = [
        f"[contact: {', '.join([name or 'no name', *[n for n in numbers if n]])}]"
        for name, numbers in cards[:MAX_CARDS]
    ]
    if len(cards) > MAX_CARDS:
        lines.append(f"[and {len(cards) - MAX_CARDS} more contacts]")
    return "\n".join(lines) or "[contact card]"


def too_large(max_bytes: int) -> str:
    return f"That file is too large for me: the limit is {max_bytes / 1024 / 1024:.3g} MB."


class MediaFetcher(Protocol):
    """A channel's way to its own attachments (it holds the credentials)."""

    async def fetch_media(
        self, message: InboundMessage, index: int, *, max_bytes: int
    ) -> Attachment:
        """The `index`th attachment of `message`; MediaRejected ("too_large" as soon as the
        download passes `max_bytes`, "fetch_failed") when it cannot be had."""
        ...


class Transcriber(Protocol):
    """A speech-to-text model (bot.llm.transcription)."""

    ref: ModelRef

    async def transcribe(self, audio: Attachment) -> Transcript:
        """The text of the audio; raise ModelUnavailable or ModelError when it cannot."""
        ...


class UsageNotes(Protocol):
    """Where a transcription's tokens go: the turn's calls, written with them at its end
    (bot.usage.RedisUsage)."""

    def note(self, conversation: str, model: str, usage: Usage, kind: CallKind) -> object: ...


def media_type(content_type: str) -> str:
    """A content type without parameters, lower case (`audio/ogg; codecs=opus` → `audio/ogg`)."""
    return content_type.split(";")[0].strip().lower()


@dataclass(frozen=True, slots=True, kw_only=True)
class TurnMedia:
    """What a turn's attachments came to: each message's text for the model and memory, the
    pictures for the last turn, or a refusal to send instead of calling a model."""

    texts: tuple[str, ...] = ()
    images: tuple[Attachment, ...] = ()
    refusal: str | None = None


class MediaReader:
    """Fetches, checks and converts the attachments of one turn."""

    def __init__(
        self,
        *,
        fetchers: Mapping[str, MediaFetcher],
        transcriber: Transcriber | None,
        max_bytes: int,
        log: Logger,
        usage: UsageNotes | None = None,
    ) -> None:
        self.fetchers = fetchers
        self.transcriber = transcriber
        self.max_bytes = max_bytes
        self.log = log
        self.usage = usage

    async def read(self, batch: Sequence[InboundMessage], *, vision: bool) -> TurnMedia:
        """Each message's text with its attachments turned into notes and transcripts, and
        the pictures. `vision`: a model of the chain takes images (else pictures are refused
        before any download). The first attachment that cannot be used ends it in a refusal."""
        texts: list[str] = []
        images: list[Attachment] = []
        for message in batch:
            parts = [message.text] if message.text.strip() else []
            for index in range(len(message.media)):
                # The channel's own note (a sticker's "[sticker 😀]"): the picture's note, and
                # all a model reads of it where it cannot be had or seen, which is no refusal.
                fallback = message.meta.get(f"note{index}")
                try:
                    note, image = await self._one(message, index, vision=vision)
                except MediaRejected as exc:
                    self.log.warning(
                        "media_rejected",
                        channel=message.channel,
                        conversation=message.conversation,
                        reason=exc.reason,
                        error=str(exc),
                    )
                    if fallback is None:
                        return TurnMedia(refusal=self._refusal(exc))
                    note, image = fallback, None
                if image is not None and fallback is not None:
                    note = fallback
                parts.append(note)
                images += [image] if image else []
            texts.append("\n".join(parts))
        return TurnMedia(texts=tuple(texts), images=tuple(images))

    async def _one(
        self, message: InboundMessage, index: int, *, vision: bool
    ) -> tuple[str, Attachment | None]:
        """One attachment as a note for the text (and the picture, if it is one)."""
        declared = media_type(message.meta.get(f"type{index}", ""))
        self._check(declared, vision=vision)
        fetcher = self.fetchers.get(message.channel)
        if fetcher is None:
            raise MediaRejected(f"{message.channel} cannot fetch attachments", reason="unsupported")
        started = time.perf_counter()
        got = await fetcher.fetch_media(message, index, max_bytes=self.max_bytes)
        kind = media_type(got.content_type)
        if kind in ("", "application/octet-stream"):
            kind = declared  # a file server that says no more than bytes
        self.log.info(
            "media_fetched",
            channel=message.channel,
            conversation=message.conversation,
            type=kind,
            bytes=len(got.data),
            ms=round((time.perf_counter() - started) * 1000, 1),
        )
        self._check(kind or "application/octet-stream", vision=vision)
        if kind in IMAGE_TYPES:
            return PICTURE, Attachment(content_type=kind, data=got.data)
        if kind in CONTACT_TYPES:
            return contact_cards(got.data), None
        audio = Attachment(content_type=kind, data=got.data)
        return f"{VOICE_NOTE} {await self._transcribe(message, audio)}", None

    def _check(self, kind: str, *, vision: bool) -> None:
        """Refuse, before or after the download, what no model here could take."""
        if not kind:
            return  # not declared: the download's own type decides
        if kind in IMAGE_TYPES:
            if not vision:
                raise MediaRejected("no model of the chain takes images", reason="no_vision")
        elif kind in CONTACT_TYPES:
            return  # read here, as text
        elif kind.startswith("audio/") or kind == "video/ogg":  # WhatsApp voice: audio/ogg
            if self.transcriber is None:
                raise MediaRejected(
                    "agents.defaults.media.transcriptionModel is not set", reason="not_configured"
                )
        else:
            raise MediaRejected(f"{kind} is not handled", reason="unsupported")

    async def _transcribe(self, message: InboundMessage, audio: Attachment) -> str:
        assert self.transcriber is not None
        started = time.perf_counter()
        try:
            transcript = await self.transcriber.transcribe(audio)
        except (ModelUnavailable, ModelError) as exc:
            raise MediaRejected(f"transcription failed: {exc}", reason="transcription") from exc
        if not transcript.text:
            raise MediaRejected("the transcript is empty", reason="transcription")
        self.log.info(
            "transcribed",
            channel=message.channel,
            conversation=message.conversation,
            ms=round((time.perf_counter() - started) * 1000, 1),
            seconds=transcript.seconds,
            text=transcript.text,  # dropped from the logs unless logging.includeContent
        )
        if self.usage is not None:  # an estimate where the server counted seconds, not tokens
            used = estimate(transcript.usage, prompt_chars=0, answer_chars=len(transcript.text))
            self.usage.note(message.conversation, str(self.transcriber.ref), used, "transcription")
        return transcript.text

    def _refusal(self, exc: MediaRejected) -> str:
        """The one sentence a person gets for an attachment that could not be used."""
        return {
            "no_vision": NO_VISION,
            "not_configured": NO_EARS,
            "transcription": NOT_HEARD,
            "unsupported": UNSUPPORTED,
            "too_large": too_large(self.max_bytes),
            "timeout": TOO_SLOW,
        }.get(exc.reason, FETCH_FAILED)
