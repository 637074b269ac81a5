"""The terminal channel: a streamed answer is rendered as Markdown as it grows, erased after a
fallback, and settled (never printed twice) by the reply; without a terminal, plain text."""

from __future__ import annotations

import io
import re

from rich.console import Console

from bot.messages import OutboundMessage
from channels.console import ConsoleChannel
from tests.helpers import inbound

ESCAPE = re.compile(
    r"\x1b\[([0-9;?]*)([A-Za-z])"  # a control sequence: its parameters, its command
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)"  # an operating system command (a hyperlink)
    r"|\x1b[()][0-9A-Za-z]|\x1b[=>]|.",
    re.DOTALL,
)


def screen(output: str, width: int = 200) -> str:
    """What a terminal shows after printing `output` (each row without its trailing spaces,
    no blank rows at the end): text written at the cursor, which moves by CR, LF (with CR, as
    the terminal driver sends it), backspace, and the cursor and erase sequences that rich
    and readline send; styles ignored."""
    rows: list[list[str]] = [[]]
    row = col = 0
    for match in ESCAPE.finditer(output):
        params, command, char = match.group(1), match.group(2), match.group(0)
        rows.extend([] for _ in range(row + 1 - len(rows)))
        if command:
            n = int(params) if params.isdigit() else 1
            if command == "A":
                row = max(0, row - n)
            elif command == "B":
                row += n
            elif command == "C":
                col += n
            elif command == "D":
                col = max(0, col - n)
            elif command == "G":
                col = n - 1
            elif command == "K" and params == "2":
                rows[row] = []
            elif command == "K" and params in ("", "0"):
                del rows[row][col:]
        elif char == "\r":
            col = 0
        elif char == "\n":
            row, col = row + 1, 0
        elif char == "\b":
            col = max(0, col - 1)
        elif char >= " " and not char.startswith("\x1b"):
            if col >= width:
                row, col = row + 1, 0
                rows.extend([] for _ in range(row + 1 - len(rows)))
            line = rows[row]
            line.extend(" " for _ in range(col + 1 - len(line)))
            line[col] = char
            col += 1
    return "\n".join("".join(line).rstrip() for line in rows).rstrip("\n")


def terminal() -> Console:
    """A terminal 80 columns wide, whose output the test reads."""
    return Console(file=io.StringIO(), force_terminal=True, width=80)


def shown(console: Console) -> str:
    """What the terminal that `console` writes to shows now."""
    assert isinstance(console.file, io.StringIO)
    return screen(console.file.getvalue(), width=console.width)


def reply(console: ConsoleChannel, text: str, failure: str | None = None) -> OutboundMessage:
    return OutboundMessage(
        channel="console", conversation=console.conversation, text=text, failure=failure
    )


async def test_a_streamed_answer_is_completed_by_the_reply_not_printed_again() -> None:
    """The preview shows the answer as it grows; the reply then leaves it on screen once."""
    term = terminal()
    console = ConsoleChannel(user="ada", stream=True, console=term)
    preview = console.preview(inbound("hi"))
    assert preview is not None
    for so_far in ("Hello", "Hello there", "Hello there, Ada"):
        await preview.text(so_far)
    await preview.close()
    assert shown(term) == "Hello there, Ada"
    await console.send(reply(console, "Hello there, Ada."))
    assert shown(term) == "Hello there, Ada."


async def test_a_fallback_mid_stream_erases_the_dead_models_words() -> None:
    """A reset erases the lines shown so far; the fallback's answer is shown alone."""
    term = terminal()
    console = ConsoleChannel(user="ada", stream=True, console=term)
    preview = console.preview(inbound("hi"))
    assert preview is not None
    await preview.text("dead words\n\nover two paragraphs")
    assert shown(term) == "dead words\n\nover two paragraphs"
    await preview.reset()
    assert shown(term) == ""
    await preview.text("From the backup")
    await preview.close()
    await console.send(reply(console, "From the backup."))
    assert shown(term) == "From the backup."


async def test_a_streamed_answer_is_rendered_as_markdown() -> None:
    """On a terminal, a Markdown answer shows bold, a heading and a list without their
    markers, while it streams and once the reply settles it."""
    answer = "**Status:** ok\n\n## Title\n\n- first item\n- second item"
    term = terminal()
    console = ConsoleChannel(user="ada", stream=True, console=term)
    preview = console.preview(inbound("hi"))
    assert preview is not None
    await preview.text(answer)
    while_streaming = shown(term)
    await preview.close()
    await console.send(reply(console, answer))
    for view in (while_streaming, shown(term)):
        lines = [line.strip() for line in view.splitlines() if line.strip()]
        assert lines == ["Status: ok", "Title", "• first item", "• second item"], view
    assert shown(term).count("Status: ok") == 1


async def test_a_failed_reply_erases_the_streamed_answer_and_says_why() -> None:
    """A reply that stands in for a failed turn clears the streamed words and prints why on
    stderr; a reply unlike what was streamed replaces it."""
    term, err = terminal(), io.StringIO()
    console = ConsoleChannel(user="ada", err=err, stream=True, console=term)
    preview = console.preview(inbound("hi"))
    assert preview is not None
    await preview.text("half an **answer**")
    await preview.close()
    await console.send(reply(console, "Sorry.", failure="the turn failed"))
    assert shown(term) == ""
    assert err.getvalue() == "bot: the turn failed\n"
    assert console.failures == 1
    preview = console.preview(inbound("again"))
    assert preview is not None
    await preview.text("A first draft")
    await preview.close()
    await console.send(reply(console, "Another *text*."))
    assert shown(term) == "Another text."


async def test_without_stream_there_is_no_preview_and_the_reply_prints_once() -> None:
    """`bot chat -m` and a console that is not a terminal: no preview, and the reply's text
    printed as it is (Markdown left raw for scripts)."""
    out, err = io.StringIO(), io.StringIO()
    console = ConsoleChannel(user="ada", out=out, err=err)
    assert console.preview(inbound("hi")) is None
    await console.send(reply(console, "**Hello.**"))
    await console.send(reply(console, "Sorry.", failure="no model answered"))
    assert out.getvalue() == "**Hello.**\n"
    assert err.getvalue() == "bot: no model answered\n"
    assert console.failures == 1
