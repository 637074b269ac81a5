"""What a Twilio WhatsApp inbound form says beyond its Body: a shared location, a quick-reply
button or list choice, a sticker, a forward, a reply to an earlier message.

Parameter names are Twilio's (https://www.twilio.com/docs/messaging/guides/webhook-request):
Latitude, Longitude, Address, Label; ButtonText, ButtonPayload; ListId, ListTitle; Forwarded,
FrequentlyForwarded; OriginalRepliedMessageSid, OriginalRepliedMessageSender.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping

from bot.messages import Reply
from channels import rendering

_SID = re.compile(r"[A-Za-z0-9]{1,64}")


def text(form: Mapping[str, str]) -> str:
    """The Body, after a bracketed line for a shared location, a tapped button or a list
    choice (whose text Twilio also repeats as the Body: then said once)."""
    body = form.get("Body", "")
    lines: list[str] = []
    if form.get("Latitude") and form.get("Longitude"):
        label, address = form.get("Label", ""), form.get("Address", "")
        try:
            latitude, longitude = float(form["Latitude"]), float(form["Longitude"])
        except ValueError:
            latitude = longitude = math.nan  # no place: rendering.location gives None
        if found := rendering.location(latitude, longitude, name=label, address=address):
            lines.append(found)
            if body.strip() and body.strip() in (label.strip(), address.strip()):
                body = ""
    choices: tuple[tuple[Callable[[str, str], str | None], str, str], ...] = (
        (rendering.button, form.get("ButtonText", ""), form.get("ButtonPayload", "")),
        (rendering.list_choice, form.get("ListTitle", ""), form.get("ListId", "")),
    )
    for render, label, payload in choices:
        if found := render(label, payload):
            lines.append(found)
            if body.strip() in (label.strip(), payload.strip()):
                body = ""
    return "\n".join([*lines, body] if body.strip() else lines)


def sticker_notes(types: Mapping[str, str]) -> dict[str, str]:
    """meta `note{n}` for each sticker (WhatsApp sends stickers, and only stickers, as WebP):
    the picture's note for a vision model, and all a text model reads of it."""
    return {
        key.replace("type", "note", 1): rendering.sticker()
        for key, content_type in types.items()
        if content_type.split(";")[0].strip().lower() == "image/webp"
    }


def reply(form: Mapping[str, str]) -> Reply | None:
    """The earlier message this one replies to (swipe-to-reply): its SID, and whether it was
    the bot's (OriginalRepliedMessageSender is the number the person wrote to)."""
    sid = form.get("OriginalRepliedMessageSid", "")
    if not sid:
        return None
    to = form.get("To", "")
    return Reply(
        ref=sid if _SID.fullmatch(sid) else "",
        to_bot=bool(to) and form.get("OriginalRepliedMessageSender", "") == to,
    )


def forwarded(form: Mapping[str, str]) -> str | None:
    """ "" for a forwarded message (WhatsApp never says from whom), None for one that was not."""
    flags = (form.get("Forwarded", ""), form.get("FrequentlyForwarded", ""))
    return "" if "true" in (f.strip().lower() for f in flags) else None
