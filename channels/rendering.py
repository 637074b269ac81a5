"""The short bracketed lines a model reads for what is not typed text: a location, a contact,
a button tapped, a poll, a die. Shared by the channels, so both say the same thing the same way.

Every line is one line, cut to a few dozen characters per field: never raw JSON, never a
platform URL, never an id the person did not choose to show.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

FIELD_CHARS = 80  # one field of a line (a name, an address, a question)
QUOTE_CHARS = 300  # a quoted earlier message
MAX_NUMBERS = 3  # phone numbers shown per contact
MAX_OPTIONS = 10  # poll options shown
_SPACE = re.compile(r"\s+")
# A payload worth showing: a short plain token (ids, "yes_confirm"), not JSON or a URL.
_PLAIN = re.compile(r"[A-Za-z0-9_.:-]{1,40}")


def clean(text: str, limit: int = FIELD_CHARS) -> str:
    """`text` on one line, whitespace collapsed, brackets that would end ours softened, cut to
    `limit` characters (with "…")."""
    flat = _SPACE.sub(" ", text).strip().replace("[", "(").replace("]", ")")
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"


def _join(*parts: str) -> str:
    return ", ".join(p for p in parts if p)


def coordinates(latitude: float, longitude: float) -> str | None:
    """`lat, lon` to 5 decimals (about a metre), or None when they are no place on Earth."""
    if not (math.isfinite(latitude) and math.isfinite(longitude)):
        return None
    if not (-90 <= latitude <= 90 and -180 <= longitude <= 180):
        return None
    return f"{latitude:.5f}, {longitude:.5f}"


def location(
    latitude: float, longitude: float, *, name: str = "", address: str = "", live: bool = False
) -> str | None:
    """[location: Name, Address (lat, lon)]; None when the coordinates are not a place."""
    where = coordinates(latitude, longitude)
    if where is None:
        return None
    label = "live location" if live else "location"
    named = _join(clean(name), clean(address))
    return f"[{label}: {named} ({where})]" if named else f"[{label}: {where}]"


def venue(latitude: float, longitude: float, *, title: str, address: str) -> str | None:
    """[venue: Title, Address (lat, lon)]."""
    where = coordinates(latitude, longitude)
    named = _join(clean(title), clean(address))
    if where is None:
        return f"[venue: {named}]" if named else None
    return f"[venue: {named} ({where})]" if named else f"[venue: {where}]"


def contact(name: str, numbers: Iterable[str]) -> str:
    """[contact: Name, +1 555 0100, +44 20 7946 0000]: the numbers the person chose to share."""
    shown = [clean(n, 32) for n in numbers if n.strip()][:MAX_NUMBERS]
    return f"[contact: {_join(clean(name) or 'no name', *shown)}]"


def _choice(kind: str, text: str, payload: str) -> str | None:
    label = clean(text)
    extra = payload.strip()
    if extra and _PLAIN.fullmatch(extra) and extra != text.strip():
        return f"[{kind}: {label} ({extra})]" if label else f"[{kind}: {extra}]"
    return f"[{kind}: {label}]" if label else None


def button(text: str, payload: str = "") -> str | None:
    """[button: Yes]: a quick-reply button tapped; its payload too when it is a short plain
    token that says something the text does not (never JSON or a URL)."""
    return _choice("button", text, payload)


def list_choice(title: str, item_id: str = "") -> str | None:
    """[chose from a list: Title]: an item picked from a list message (its id as for
    buttons)."""
    return _choice("chose from a list", title, item_id)


def poll(question: str, options: Iterable[str]) -> str:
    """[poll: Question? (A / B / C)]."""
    shown = [clean(o, 40) for o in options if o.strip()][:MAX_OPTIONS]
    asked = clean(question, 200) or "no question"
    return f"[poll: {asked} ({' / '.join(shown)})]" if shown else f"[poll: {asked}]"


def dice(emoji: str, value: int) -> str:
    """[dice 🎲 4]."""
    return f"[dice {clean(emoji, 8) or '🎲'} {value}]"


def sticker(emoji: str = "") -> str:
    """[sticker 😀] (or just [sticker])."""
    shown = clean(emoji, 8)
    return f"[sticker {shown}]" if shown else "[sticker]"
