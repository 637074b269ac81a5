"""The terminal channel: a streamed answer is printed as it grows, reprinted cleanly after a
fallback, and completed (never printed twice) by the reply."""

from __future__ import annotations

import io

from bot.messages import OutboundMessage
from channels.console import ERASE_LINE, LINE_UP, ConsoleChannel
from tests.helpers import inbound


def reply(console: ConsoleChannel, text: str, failure: str | None = None) -> OutboundMessage:
    return OutboundMessage(
        channel="console", conversation=console.conversation, text=text, failure=failure
    )


async def test_a_streamed_answer_is_completed_by_the_reply_not_printed_again() -> None:
    """The preview prints what each text adds; the reply then prints only the rest."""
    out = io.StringIO()
    console = ConsoleChannel(user="ada", out=out, stream=True)
    preview = console.preview(inbound("hi"))
    assert preview is not None
    for so_far in ("Hello", "Hello there", "Hello there, Ada"):
        await preview.text(so_far)
    await preview.close()
    await console.send(reply(console, "Hello there, Ada."))
    assert out.getvalue() == "Hello there, Ada.\n"


async def test_a_fallback_mid_stream_erases_the_dead_models_words() -> None:
    """A reset erases the lines printed so far; the fallback's answer is printed alone."""
    out = io.StringIO()
    console = ConsoleChannel(user="ada", out=out, stream=True)
    preview = console.preview(inbound("hi"))
    assert preview is not None
    await preview.text("dead words\nover two lines")
    await preview.reset()
    await preview.text("From the backup")
    await console.send(reply(console, "From the backup."))
    erased = ERASE_LINE + LINE_UP + ERASE_LINE
    assert out.getvalue() == f"dead words\nover two lines{erased}From the backup.\n"


async def test_without_stream_there_is_no_preview_and_the_reply_prints_once() -> None:
    """`bot chat -m` and a console that is not a terminal: no preview, the reply as today."""
    out, err = io.StringIO(), io.StringIO()
    console = ConsoleChannel(user="ada", out=out, err=err)
    assert console.preview(inbound("hi")) is None
    await console.send(reply(console, "Hello."))
    await console.send(reply(console, "Sorry.", failure="no model answered"))
    assert out.getvalue() == "Hello.\n"
    assert err.getvalue() == "bot: no model answered\n"
    assert console.failures == 1
