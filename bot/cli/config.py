"""`bot config check`: validate a config and print its model chain."""

from __future__ import annotations

import sys

from bot.cli.common import EXIT_CONFIG, EXIT_OK, load_settings_config
from bot.errors import ConfigError
from bot.llm.registry import ModelRegistry
from bot.settings import Settings


def config_check(settings: Settings, file: str | None) -> int:
    """Print the resolved chain of a config, or every error in it (exit 2)."""
    try:
        config = load_settings_config(settings, file)
    except ConfigError as exc:
        print(f"{len(exc.issues)} problem(s) in the config:", file=sys.stderr)
        for issue in exc.issues:
            print(f"  {issue}", file=sys.stderr)
        return EXIT_CONFIG
    registry = ModelRegistry(config)
    print(f"config: {config.source} (models.mode: {config.models.mode})")
    print("chain (each turn tries these in order):")
    for n, info in enumerate(registry.chain(), 1):
        print(
            f"  {n}. {info.ref}  alias={info.alias or '-'}  api={info.api}  "
            f"baseUrl={info.base_url}  contextWindow={info.context_window}  "
            f"maxTokens={info.max_tokens}"
            + ("  input=text,image" if info.images else "")
            + ("" if info.listed else "  (not listed: defaults)")
        )
    media = config.agents.defaults.media
    print(
        f"media: maxBytes={media.max_bytes}  pictures="
        + ("first input=text,image model" if any(m.images for m in registry.chain()) else "off")
        + f"  voice notes={media.transcription_model or 'off'}"
    )
    for warning in config.warnings():
        print(f"warning: {warning}")
    return EXIT_OK
