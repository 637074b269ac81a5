"""The dependency rules of DESIGN §2, checked on every module's imports."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORE = (
    "bot.agent",
    "bot.commands",
    "bot.access",
    "bot.memory",
    "bot.llm",
    "bot.intake",
    "bot.worker",
    "bot.wakeups",
    "bot.deadletters",
    "bot.tools",
)
CHANNEL_ALLOWED = (
    "bot.messages",
    "bot.errors",
    "bot.settings",
    "bot.config",
    "channels.base",
    # A channel's own parsing, and the bracketed lines the channels share: neutral pieces too.
    "channels.rendering",
    "channels.markdown",
    "channels.telegram_parse",
    "channels.whatsapp_parse",
    "channels.telegram_draft",  # Telegram's drafts: a part of the Telegram adapter
)
SDK_HOMES = {
    "openai": {"bot.llm.providers", "bot.llm.transcription"},  # transcription sits beside
    "twilio": {"channels.whatsapp"},
    "markdown_it": {"channels.markdown"},  # one parse of a reply's Markdown, for every channel
    "mcp": {"bot.tools.mcp"},  # the MCP sessions; the rest of bot.tools sees neutral values
    # The console's templates: jinja only inside bot.console (DESIGN §2), markup-safe SVG too.
    "jinja2": {"bot.console.app"},
    "aiohttp_jinja2": {"bot.console.app", "bot.console.pages"},
    "markupsafe": {"bot.console.charts"},
    "dateparser": {"bot.reminders.phrases"},  # /remind phrases; zoneinfo places them
}
ASSEMBLERS = {"bot.app", "bot.cli", "bot.__main__", "bot.doctor"}  # cli: its modules; doctor: Redis


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module a file imports, absolute names (`from a import b` yields a and a.b)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


MODULES = {
    module_name(p): imports_of(p) for pkg in ("bot", "channels") for p in (ROOT / pkg).rglob("*.py")
}


CONFIG_MODULES = {
    name for name in MODULES if name == "bot.config" or name.startswith("bot.config.")
}
CONFIG_MAY_IMPORT = {"bot.errors", "bot.config"}  # and the config package's own modules
LEAVES = {"bot.messages", "bot.errors", "bot.settings", "bot.scripts", *CONFIG_MODULES}


def project(imports: set[str]) -> set[str]:
    return {i for i in imports if i.split(".")[0] in ("bot", "channels")}


def within(name: str, prefixes: tuple[str, ...] | set[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_modules_were_found() -> None:
    """The checks below see the real package (a guard against an empty walk)."""
    assert {"bot.messages", "bot.agent", "bot.llm.providers", "channels.base"} <= MODULES.keys()
    assert {"bot.config", "bot.config.schema", "bot.config.loading"} <= CONFIG_MODULES


@pytest.mark.parametrize("leaf", sorted(LEAVES))
def test_leaves_import_nothing_from_the_project(leaf: str) -> None:
    """messages, errors, settings, scripts and config import nothing else (config: only
    errors)."""
    allowed = CONFIG_MAY_IMPORT if leaf in CONFIG_MODULES else set()
    extra = {i for i in project(MODULES[leaf]) if i != "bot" and not within(i, {leaf, *allowed})}
    assert not extra, f"{leaf} imports {sorted(extra)}"


def test_core_never_imports_web_channels_or_cli() -> None:
    """The core (bot.tools too) stays free of aiohttp.web, channel adapters and the CLI."""
    bad = {
        name: sorted(i for i in imports if within(i, {"aiohttp.web", "channels", "bot.cli"}))
        for name, imports in MODULES.items()
        if within(name, CORE)
    }
    assert not {k: v for k, v in bad.items() if v}


@pytest.mark.parametrize("sdk", sorted(SDK_HOMES))
def test_each_sdk_has_one_home(sdk: str) -> None:
    """openai is imported only in bot.llm (providers, transcription), twilio only in
    channels.whatsapp, markdown_it only in channels.markdown, mcp only in bot.tools.mcp, jinja
    (and aiohttp_jinja2, markupsafe) only in bot.console."""
    users = {name for name, imports in MODULES.items() if any(within(i, {sdk}) for i in imports)}
    assert users <= SDK_HOMES[sdk]


def test_the_console_stays_out_of_channels_and_the_cli() -> None:
    """bot.console reads the stores the composition root hands it: no channel adapter, no CLI,
    and nothing of the core imports the console."""
    console = {name for name in MODULES if within(name, {"bot.console"})}
    assert console, "bot.console was not found"
    bad = {
        name: sorted(i for i in MODULES[name] if within(i, {"channels", "bot.cli", "bot.app"}))
        for name in console
    }
    assert not {k: v for k, v in bad.items() if v}
    users = {
        n for n, imports in MODULES.items() if any(within(i, {"bot.console"}) for i in imports)
    }
    assert users - console <= {"bot.app", "bot.cli.serve", "bot.cli.console"}


def test_channels_import_only_neutral_pieces() -> None:
    """Channel adapters depend only on messages, errors, settings/config, channels.base and the
    channels' parsing and rendering modules."""
    bad = {
        # `from channels import rendering` names the package too (its __init__ is empty).
        name: sorted(i for i in project(imports) - {"channels"} if not within(i, CHANNEL_ALLOWED))
        for name, imports in MODULES.items()
        if name.startswith("channels.") and name != "channels.base"
    }
    assert not {k: v for k, v in bad.items() if v}


def test_only_the_composition_root_assembles() -> None:
    """Only bot.app and bot.cli import the concrete pieces of several layers together."""

    def concrete(i: str) -> bool:
        return within(i, {"bot.llm.providers", "bot.redisdb", "bot.app"}) or (
            i.startswith("channels.") and not within(i, {"channels.base"})
        )

    bad = {
        name
        for name, imports in MODULES.items()
        if not within(name, ASSEMBLERS)
        and name not in SDK_HOMES["openai"]  # the openai homes share its error translation
        and not name.startswith("channels.")
        and any(concrete(i) for i in project(imports))
    }
    assert not bad, f"concrete pieces wired outside the composition root: {sorted(bad)}"


# A module that takes its collaborators through Protocols defined beside it: the concrete
# classes behind them, which it must not import (the composition root picks those).
PROTOCOL_SEAMS = {
    "bot.worker": {"bot.agent.Agent", "bot.memory"},  # TurnRunner, TurnMemory
    "bot.commands": {  # ConversationStore, Pairing, BreakerStates, UsageReports, ModelChoices
        "bot.memory.RedisMemory",
        "bot.access.RedisAccess",
        "bot.llm.breaker.RedisBreaker",
        "bot.llm.choice.RedisModelChoice",
        "bot.usage.RedisUsage",
    },
    "bot.agent": {  # AccessControl, CommandHandler, ModelChoice, TurnUsage, AttachmentReader
        "bot.access.RedisAccess",
        "bot.commands.Commands",
        "bot.llm.choice.RedisModelChoice",
        "bot.usage.RedisUsage",
        "bot.media.MediaReader",
        "bot.memory.RedisMemory",
    },
    "bot.memory.compaction": {"bot.memory.store.RedisMemory"},  # History
    "bot.llm.failover": {  # Breakers, LocalModels, CallLedger
        "bot.llm.breaker.RedisBreaker",
        "bot.llm.lmstudio.LMStudioModels",
        "bot.usage.RedisUsage",
    },
}


@pytest.mark.parametrize("name", sorted(PROTOCOL_SEAMS))
def test_seams_take_protocols_not_concrete_classes(name: str) -> None:
    """The worker, the agent, the chat commands, compaction and failover name the stores they
    use only through their own Protocols."""
    bad = sorted(i for i in MODULES[name] if within(i, PROTOCOL_SEAMS[name]))
    assert not bad, f"{name} imports {bad}"
