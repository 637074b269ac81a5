"""What a Telegram Message holds, read the way a model can use it: its text or caption, its
attachment (photo, voice, audio, document, video, static sticker) as a file id, and bracketed
lines for the rest (location, venue, contact, poll, dice, animated sticker), who it was
forwarded from (names only, never ids) and what it replies to (the quoted text, cut).

Field names are the Bot API's Message object (https://core.telegram.org/bots/api#message).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeGuard

from bot.errors import BadPayload
from bot.messages import Reply
from channels import rendering

# Attachments other than photos, with the content type to assume when Telegram gives none.
# Videos are listed so the person is told they cannot be watched (before any download).
KINDS = {
    "voice": "audio/ogg",
    "audio": "audio/mpeg",
    "document": "application/octet-stream",
    "video": "video/mp4",
    "video_note": "video/mp4",
    "animation": "video/mp4",
}
# What a person can send that nothing here can read: the message becomes an empty turn, which
# the agent answers with its one-line "describe it in words".
UNREADABLE = ("story", "game", "paid_media", "giveaway", "giveaway_winners", "invoice")


def _is_int(value: object) -> TypeGuard[int]:
    """A JSON integer (not a bool, which Python counts as one)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _dict(value: object) -> dict[str, Any]:
    """An object of an update, or {} where the update holds something else there."""
    return value if isinstance(value, dict) else {}


def _str(value: object) -> str:
    """A string field of an update ("" where it holds something else), checked as Unicode."""
    return _utf8(value) if isinstance(value, str) else ""


def _utf8(text: str) -> str:
    """`text` if it can be stored as UTF-8; a lone surrogate (a "\\ud800" escape) is a
    BadPayload, not a crash further on."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise BadPayload("the update holds text that is not valid Unicode") from exc
    return text


def _area(photo: dict[str, Any]) -> int:
    width, height = photo.get("width"), photo.get("height")
    return width * height if _is_int(width) and _is_int(height) else 0


def _size(item: dict[str, Any]) -> int:
    size = item.get("file_size")
    return size if _is_int(size) and size > 0 else 0


def _number(value: object) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def attachments(message: dict[str, Any]) -> tuple[tuple[str, ...], dict[str, str]]:
    """A message's attachment (`photo`: its largest size; `voice`, `audio`, `document`, the
    videos; a static `sticker`) as file ids, with meta `type{n}` (content type), `size{n}`
    (bytes, when Telegram says) and, for a sticker, `note{n}` ("[sticker 😀]")."""
    photo = message.get("photo")
    found: dict[str, Any] = {}
    content_type = ""
    meta: dict[str, str] = {}
    sticker = _dict(message.get("sticker"))
    if isinstance(photo, list) and (sizes := [_dict(p) for p in photo if _dict(p)]):
        found = max(sizes, key=lambda p: (_area(p), _size(p)))
        content_type = "image/jpeg"  # Telegram re-encodes every photo size as JPEG
    elif sticker and not (sticker.get("is_animated") or sticker.get("is_video")):
        found, content_type = sticker, "image/webp"  # a static sticker is a WebP picture
        meta["note0"] = rendering.sticker(_str(sticker.get("emoji")))
    else:
        for kind, default in KINDS.items():
            if isinstance(message.get(kind), dict):
                found = message[kind]
                mime = found.get("mime_type")
                content_type = _utf8(mime) if isinstance(mime, str) and mime else default
                break
    file_id = found.get("file_id")
    if not isinstance(file_id, str) or not file_id:
        return (), {}
    meta["type0"] = content_type
    if _size(found):
        meta["size0"] = str(_size(found))
    return (_utf8(file_id),), meta


def described(message: dict[str, Any]) -> str | None:
    """A bracketed line for what the message holds that is neither text nor an attachment
    (a location, venue, contact, poll, dice, animated or video sticker); None when none."""
    where = _dict(message.get("location"))
    latitude, longitude = _number(where.get("latitude")), _number(where.get("longitude"))
    if venue := _dict(message.get("venue")):
        spot = _dict(venue.get("location"))
        return rendering.venue(
            _number(spot.get("latitude")),
            _number(spot.get("longitude")),
            title=_str(venue.get("title")),
            address=_str(venue.get("address")),
        )
    if where:
        return rendering.location(latitude, longitude, live=_is_int(where.get("live_period")))
    if card := _dict(message.get("contact")):
        name = " ".join(_str(card.get(k)) for k in ("first_name", "last_name")).strip()
        return rendering.contact(name, [_str(card.get("phone_number"))])
    if asked := _dict(message.get("poll")):
        options = [_str(_dict(o).get("text")) for o in asked.get("options") or []]
        return rendering.poll(_str(asked.get("question")), options)
    if rolled := _dict(message.get("dice")):
        value = rolled.get("value")
        return rendering.dice(_str(rolled.get("emoji")), value if _is_int(value) else 0)
    sticker = _dict(message.get("sticker"))
    if sticker.get("is_animated") or sticker.get("is_video"):  # no picture to show
        return rendering.sticker(_str(sticker.get("emoji")))
    return None


def _name(user: dict[str, Any]) -> str:
    """A person's or chat's display name, never an id."""
    parts = (_str(user.get("first_name")), _str(user.get("last_name")))
    return rendering.clean(" ".join(p for p in parts if p) or _str(user.get("title")))


def forwarded_from(message: dict[str, Any]) -> str | None:
    """Who a forwarded message came from (`forward_origin`: a user, a hidden user, a chat or a
    channel, with the author's signature), "" when Telegram does not say; None when it was not
    forwarded."""
    origin = message.get("forward_origin")
    if not isinstance(origin, dict):
        return None
    kind = origin.get("type")
    if kind == "user":
        name = _name(_dict(origin.get("sender_user")))
    elif kind == "hidden_user":
        name = rendering.clean(_str(origin.get("sender_user_name")))
    elif kind in ("chat", "channel"):
        chat = _name(_dict(origin.get("sender_chat" if kind == "chat" else "chat")))
        title = f"the channel {chat}" if kind == "channel" and chat else chat
        signed = rendering.clean(_str(origin.get("author_signature")))
        name = " in ".join(p for p in (signed, title) if p)
    else:
        name = ""
    return name


def reply(message: dict[str, Any], *, bot_id: object) -> Reply | None:
    """What the message replies to: `reply_to_message` (in this chat) or `external_reply`
    (elsewhere), with the part the person quoted (`quote`) or else the earlier message's own
    text, cut. A forum topic's implicit reply to its opening message is no reply."""
    earlier = _dict(message.get("reply_to_message"))
    external = _dict(message.get("external_reply"))
    if earlier.get("forum_topic_created") is not None or not (earlier or external):
        return None
    quoted = _str(_dict(message.get("quote")).get("text"))
    source = earlier or external
    if not quoted:
        typed = source.get("text") if "text" in source else source.get("caption")
        quoted = _str(typed) or described(source) or (_photo_or_file(source))
    author = _dict(earlier.get("from"))
    to_bot = bool(author) and bot_id is not None and author.get("id") == bot_id
    message_id = earlier.get("message_id")
    return Reply(
        ref=str(message_id) if _is_int(message_id) else "",
        to_bot=to_bot,
        author="" if to_bot else _name(author),
        quote=rendering.clean(quoted, rendering.QUOTE_CHARS),
    )


def _photo_or_file(message: dict[str, Any]) -> str:
    """A word for the attachment of a quoted message that has no text ("" when none)."""
    if message.get("photo"):
        return "[picture]"
    if message.get("sticker"):
        return rendering.sticker(_str(_dict(message.get("sticker")).get("emoji")))
    return next((f"[{kind.replace('_', ' ')}]" for kind in KINDS if message.get(kind)), "")


@dataclass(frozen=True, slots=True, kw_only=True)
class Content:
    """A message as the bot reads it: what the person typed (text or caption: the part a
    group's @mention is looked for in), the bracketed line for the rest, the attachment."""

    typed: str
    line: str | None = None
    media: tuple[str, ...] = ()
    meta: dict[str, str] = field(default_factory=dict)

    def text(self, typed: str | None = None) -> str:
        """The line, then the typed text (or `typed` in its place: without the mention)."""
        words = self.typed if typed is None else typed
        return "\n".join(p for p in (self.line, words) if p)


def content(message: dict[str, Any]) -> Content | None:
    """What the message holds; None when it holds nothing a person sent (a service message
    such as a new member or a pinned message) or a text that is not a string."""
    media, meta = attachments(message)
    raw = message.get("text") if "text" in message else message.get("caption")
    if raw is not None and not isinstance(raw, str):
        return None
    line = described(message)
    unreadable = any(kind in message for kind in UNREADABLE)
    if raw is None and not media and line is None and not unreadable:
        return None
    return Content(typed=_utf8(raw or ""), line=line, media=media, meta=meta)
