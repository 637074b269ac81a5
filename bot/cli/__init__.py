"""`bot …` subcommands: `parser` parses and dispatches; each subcommand's body lives in the
module named for it (serve, chat, admin, deadletters, usage, telegram, logs, doctor, config),
all handing off to the composition root (bot.app)."""

from bot.cli.parser import build_parser, main

__all__ = ["build_parser", "main"]
