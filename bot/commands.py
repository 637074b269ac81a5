"""Chat commands: a message starting with `/` is answered here and never reaches a model.

Handlers are methods marked with `@command`; each gets a typed context. Changing the model
and approving strangers are admin-only (`commands.admins`); `commands.modelSwitch: everyone`
opens the per-conversation switch. A refused command changes nothing and is logged. Other
people's ids (who changed a model, whose conversation) are shown to admins only.

A little over 400 lines, on purpose: every command in one module is what `/help` lists and what
a person adding one reads beside the others; the Protocols of the stores they use come first.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from bot.access import PairingRequest, Role
from bot.errors import CommandError
from bot.llm.breaker import BreakerState
from bot.llm.choice import ModelChange, Source
from bot.llm.registry import ModelInfo, ModelRegistry
from bot.llm.types import ModelRef
from bot.logs import Logger
from bot.memory import Compactor, ConversationState
from bot.messages import InboundMessage
from bot.reminders.chat import ReminderBook, remind, timezone
from bot.usage import GroupBy, Row, Totals


@dataclass(frozen=True, slots=True, kw_only=True)
class CommandContext:
    """What a handler knows: the message, the command's arguments, the sender's role."""

    message: InboundMessage
    name: str
    args: str
    role: Role

    @property
    def conversation(self) -> str:
        return self.message.conversation

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


@dataclass(frozen=True, slots=True, kw_only=True)
class CommandSpec:
    name: str
    aliases: tuple[str, ...]
    usage: str
    summary: str
    admin: bool


Handler = Callable[[CommandContext], Awaitable[str]]


class ConversationStore(Protocol):
    """What /status, /new and /compact need of the conversation memory."""

    async def state(self, conversation: str) -> ConversationState: ...

    async def clear(self, conversation: str) -> None: ...


class ModelChoices(Protocol):
    """What /model and /status need of the stored model choices (bot.llm.choice)."""

    async def current(self, conversation: str) -> tuple[ModelRef, Source]: ...

    async def default(self) -> ModelRef: ...

    async def set(self, scope: str, ref: ModelRef | None, *, who: str) -> ModelChange: ...

    async def history(self, count: int = 10) -> list[ModelChange]: ...

    async def last_change(self, scope: str, *, within: int = 100) -> ModelChange | None: ...


class Pairing(Protocol):
    """What /approve needs of access control."""

    async def approve(self, code: str, *, who: str) -> PairingRequest | None: ...


class BreakerStates(Protocol):
    """What /status shows of the models' breakers."""

    async def states(self, models: list[str]) -> list[BreakerState]: ...


class ToolList(Protocol):
    """What /tools reads of the tools (bot.tools' toolbox)."""

    def describe(self, *, admin: bool) -> list[str]: ...


class UsageReports(Protocol):
    """What /usage reads of the token accounting."""

    async def sender_days(self, sender: str, days: int) -> list[Totals]: ...

    async def report(self, *, by: GroupBy, days: int) -> list[Row]: ...


def command(
    name: str, *, usage: str = "", summary: str, aliases: tuple[str, ...] = (), admin: bool = False
) -> Callable[[Callable[..., Awaitable[str]]], Callable[..., Awaitable[str]]]:
    """Mark a Commands method as the handler of `/name`."""

    def mark(handler: Callable[..., Awaitable[str]]) -> Callable[..., Awaitable[str]]:
        handler.__command__ = CommandSpec(  # type: ignore[attr-defined]
            name=name, aliases=aliases, usage=usage, summary=summary, admin=admin
        )
        return handler

    return mark


def parse_command(text: str) -> tuple[str, str] | None:
    """`/Model@my_bot Opus` → ("model", "Opus"); None when the text is not a command."""
    stripped = text.strip()
    if not stripped.startswith("/") or len(stripped) < 2 or stripped[1].isspace():
        return None
    head, _, args = stripped[1:].partition(" ")
    return head.split("@", 1)[0].lower(), args.strip()


def command_menu(*, admin: bool) -> list[dict[str, str]]:
    """The commands as Telegram's `/` menu lists them (BotCommand objects), from the same
    table the handlers use: everyone's, plus the admin-only ones when `admin`."""
    specs: list[CommandSpec] = [
        spec
        for _, member in inspect.getmembers(Commands, inspect.isfunction)
        if (spec := getattr(member, "__command__", None)) is not None
    ]
    return [
        {"command": spec.name, "description": spec.summary[:256]}
        for spec in specs
        if admin or not spec.admin
    ]


class Commands:
    """Every chat command, wired to the services it needs."""

    def __init__(
        self,
        *,
        choice: ModelChoices,
        registry: ModelRegistry,
        memory: ConversationStore,
        compactor: Compactor,
        access: Pairing,
        breaker: BreakerStates | None,
        model_switch: str,
        log: Logger,
        usage: UsageReports | None = None,
        daily_token_budget: int = 0,
        tools: ToolList | None = None,
        reminders: ReminderBook | None = None,
        reminder_window_hint: frozenset[str] = frozenset(),
        reminder_channels: frozenset[str] | None = None,
    ) -> None:
        """`reminder_window_hint`: channels whose reminders may be refused outside a window
        (WhatsApp without channels.whatsapp.reminderTemplateSid): setting one says so.
        `reminder_channels`: the channels a reminder can be sent on later (None: any); not the
        terminal of `bot chat`, which nobody may be at when it fires."""
        self.choice = choice
        self.reminders = reminders
        self.reminder_window_hint = reminder_window_hint
        self.reminder_channels = reminder_channels
        self.tools = tools
        self.registry = registry
        self.memory = memory
        self.compactor = compactor
        self.access = access
        self.breaker = breaker
        self.model_switch = model_switch
        self.log = log
        self.usage = usage
        self.daily_token_budget = daily_token_budget
        self.handlers: dict[str, tuple[CommandSpec, Handler]] = {}
        for _, method in inspect.getmembers(self, inspect.ismethod):
            spec: CommandSpec | None = getattr(method, "__command__", None)
            if spec is not None:
                for name in (spec.name, *spec.aliases):
                    self.handlers[name] = (spec, method)

    async def handle(self, message: InboundMessage, role: Role) -> str:
        """The reply to a command message (help for an unknown one)."""
        parsed = parse_command(message.text)
        assert parsed is not None, "handle() is only called for commands"
        name, args = parsed
        fields = {"channel": message.channel, "conversation": message.conversation, "command": name}
        found = self.handlers.get(name)
        if found is None:
            self.log.info("command", **fields, outcome="unknown")
            hint = difflib.get_close_matches(name, list(self.handlers), n=1)
            suggestion = f" Did you mean /{hint[0]}?" if hint else ""
            return f"Unknown command /{name}.{suggestion}\n\n{self._help_text(role)}"
        spec, handler = found
        if spec.admin and role != "admin":
            self.log.warning("command_refused", **fields, error="admin only")
            return f"Only admins can use /{spec.name}."
        context = CommandContext(message=message, name=name, args=args, role=role)
        try:
            reply = await handler(context)
        except CommandError as exc:
            self.log.info("command", **fields, outcome="error", error=str(exc))
            return str(exc)
        self.log.info("command", **fields, outcome="ok")
        return reply

    def _help_text(self, role: Role) -> str:
        specs = {spec.name: spec for spec, _ in self.handlers.values()}
        lines = ["Commands:"]
        for spec in sorted(specs.values(), key=lambda s: s.name):
            if spec.admin and role != "admin":
                continue
            usage = f"/{spec.name}{' ' + spec.usage if spec.usage else ''}"
            lines.append(f"{usage} — {spec.summary}")
        return "\n".join(lines)

    # -- everyone ------------------------------------------------------------------------------

    @command("help", summary="this list")
    async def help(self, ctx: CommandContext) -> str:
        return self._help_text(ctx.role)

    @command("whoami", summary="your sender id and role")
    async def whoami(self, ctx: CommandContext) -> str:
        if self.reminders is None:
            return f"You are {ctx.message.sender} ({ctx.role})."
        zone = await self.reminders.zone(ctx.message.sender)
        return f"You are {ctx.message.sender} ({ctx.role}), time zone {zone}."

    @command("new", aliases=("reset",), summary="forget this conversation and start over")
    async def new(self, ctx: CommandContext) -> str:
        await self.memory.clear(ctx.conversation)
        return "Started a new conversation: I have forgotten everything before this."

    @command("compact", usage="[focus]", summary="condense this conversation now")
    async def compact(self, ctx: CommandContext) -> str:
        ref, _ = await self.choice.current(ctx.conversation)
        info = self.registry.info(ref)
        result = await self.compactor.compact(
            ctx.conversation, model=info, focus=ctx.args or None, explicit=True
        )
        if not result.summarised and not result.dropped:
            return f"Nothing to condense yet (about {result.tokens_before} tokens of history)."
        how = "summarised" if result.summarised else "dropped (the summary failed)"
        turns = result.summarised or result.dropped
        return (
            f"Condensed: about {result.tokens_before} → {result.tokens_after} tokens "
            f"({turns} older messages {how})."
        )

    @command("status", summary="model, fallbacks, breakers and memory of this conversation")
    async def status(self, ctx: CommandContext) -> str:
        ref, source = await self.choice.current(ctx.conversation)
        chain = self.registry.chain(ref)
        state = await self.memory.state(ctx.conversation)
        tokens = self.compactor.prompt_tokens(state, [], str(ref))
        lines = [
            f"Model: {self._name(ref)} (from the {_SOURCES[source]})",
            "Fallbacks: " + (", ".join(self._name(m.ref) for m in chain[1:]) or "none"),
        ]
        if self.breaker is not None:
            states = await self.breaker.states([str(m.ref) for m in chain])
            troubled = [
                f"{s.model} {s.state}" + (f" ({s.reopens_in:.0f} s)" if s.reopens_in else "")
                for s in states
                if s.state != "closed"
            ]
            lines.append("Breakers: " + ("; ".join(troubled) or "all closed"))
        lines.append(
            f"Memory: {len(state.turns)} messages, about {tokens} tokens, "
            f"{state.summary.version if state.summary else 0} compactions"
        )
        if ctx.is_admin:
            lines += [_local_state(m) for m in chain if m.loaded is not None]
        changes = await self._visible_changes(ctx, 3)
        if changes:
            lines.append("Recent model changes:")
            lines += [
                f"  {self._scope(ctx, c.scope)}: {c.before} → {c.after}{self._by(ctx, c.who)}"
                for c in changes
            ]
        return "\n".join(lines)

    @command("models", summary="every model the gateway knows")
    async def models(self, ctx: CommandContext) -> str:
        lines = ["Models:"]
        for pid, provider in self.registry.config.providers().items():
            for spec in provider.models:
                ref = f"{pid}/{spec.id}"
                alias = self.registry.alias_of(ModelRef(pid, spec.id))
                lines.append(f"{ref}{f' ({alias})' if alias else ''} — {provider.api}")
        return "\n".join(lines)

    @command(
        "model",
        usage="[alias|provider/model|N|default …|reset]",
        summary="show or change this conversation's model",
    )
    async def model(self, ctx: CommandContext) -> str:
        words = ctx.args.split()
        if not words:
            return await self._model_menu(ctx)
        if words[0].lower() == "default":
            if not ctx.is_admin:
                return self._refuse(ctx, "Only admins can change everyone's default model.")
            if len(words) == 1:
                return f"Everyone's default: {self._name(await self.choice.default())}."
            ref = self.registry.resolve(" ".join(words[1:]))
            change = await self.choice.set("default", ref, who=ctx.message.sender)
            self._audit(ctx, change.before, change.after, "default")
            return f"Everyone's default model is now {self._name(ref)}."
        if not (ctx.is_admin or self.model_switch == "everyone"):
            return self._refuse(ctx, "Only admins can change the model.")
        if words[0].lower() == "reset":
            change = await self.choice.set(ctx.conversation, None, who=ctx.message.sender)
            self._audit(ctx, change.before, change.after, ctx.conversation)
            ref, _ = await self.choice.current(ctx.conversation)
            return f"This conversation is back to the default model, {self._name(ref)}."
        ref = self.registry.resolve(ctx.args)
        change = await self.choice.set(ctx.conversation, ref, who=ctx.message.sender)
        self._audit(ctx, change.before, change.after, ctx.conversation)
        return f"This conversation now uses {self._name(ref)}."

    @command("usage", usage="[all]", summary="your tokens and cost today and over 30 days")
    async def usage_(self, ctx: CommandContext) -> str:
        if self.usage is None:
            raise CommandError("Usage is not recorded here.")
        if ctx.args.lower() == "all":
            if not ctx.is_admin:
                return self._refuse(ctx, "Only admins can see everyone's usage.")
            rows = (await self.usage.report(by="sender", days=USAGE_DAYS))[:TOP_SENDERS]
            if not rows:
                return f"No usage in the last {USAGE_DAYS} days."
            lines = [f"Top senders, last {USAGE_DAYS} days:"]
            lines += [f"{n}. {row.key}: {_usage_line(row.totals)}" for n, row in enumerate(rows, 1)]
            return "\n".join(lines)
        if ctx.args:
            raise CommandError("Usage: /usage (your own), or /usage all (admins).")
        days = await self.usage.sender_days(ctx.message.sender, USAGE_DAYS)
        month = Totals()
        for day in days:
            month.add(day)
        lines = [f"Today: {_usage_line(days[0])}", f"Last {USAGE_DAYS} days: {_usage_line(month)}"]
        if self.daily_token_budget and not ctx.is_admin:
            left = max(0, self.daily_token_budget - days[0].tokens)
            lines.append(
                f"Daily limit: {self.daily_token_budget:,} tokens ({left:,} left today; "
                "it resets at 00:00 UTC)."
            )
        return "\n".join(lines)

    @command("tools", summary="the tools the assistant may use for you here")
    async def tools_(self, ctx: CommandContext) -> str:
        lines = self.tools.describe(admin=ctx.is_admin) if self.tools is not None else []
        if not lines:
            return "No tools are enabled here: I answer from the conversation alone."
        return "\n".join(["Tools I may use for you:", *(f"• {line}" for line in lines)])

    @command("remind", usage="in 2h TEXT|at 18:00 TEXT|list|cancel N", summary="reminders")
    async def remind_(self, ctx: CommandContext) -> str:
        channels = self.reminder_channels
        if self.reminders is None or (channels is not None and ctx.message.channel not in channels):
            raise CommandError(
                "Reminders are not available here: set them on WhatsApp or Telegram."
            )
        hint = ctx.message.channel in self.reminder_window_hint
        return await remind(self.reminders, ctx.message, ctx.args, window_hint=hint)

    @command("tz", usage="[Area/City]", summary="show or set your time zone (for reminders)")
    async def tz(self, ctx: CommandContext) -> str:
        if self.reminders is None:
            raise CommandError("Time zones are not kept here.")
        return await timezone(self.reminders, ctx.message, ctx.args)

    # -- admins --------------------------------------------------------------------------------

    @command("approve", usage="CODE", summary="let a person who asked for access in", admin=True)
    async def approve(self, ctx: CommandContext) -> str:
        if not ctx.args:
            raise CommandError("Usage: /approve CODE (the code the person was sent).")
        request = await self.access.approve(ctx.args, who=ctx.message.sender)
        if request is None:
            raise CommandError(f"No pending request with code {ctx.args.upper()} (expired?).")
        return f"Approved {request.sender}{f' ({request.name})' if request.name else ''}."

    # -- helpers -------------------------------------------------------------------------------

    async def _model_menu(self, ctx: CommandContext) -> str:
        ref, source = await self.choice.current(ctx.conversation)
        set_by = ""
        if source != "config":
            scope = "default" if source == "default" else ctx.conversation
            change = await self.choice.last_change(scope)
            by = self._by(ctx, change.who) if change else ""
            set_by = f", set{by}" if by else ""
        lines = [f"Now: {self._name(ref)} (from the {_SOURCES[source]}{set_by})."]
        aliases = self.registry.aliases()
        if aliases:
            lines.append("Switch with /model <name or number>:")
            lines += [f"{n}. {alias} — {target}" for n, (alias, target) in enumerate(aliases, 1)]
        return "\n".join(lines)

    async def _visible_changes(self, ctx: CommandContext, count: int) -> list[ModelChange]:
        """The newest `count` model changes the sender may see: all of them for an admin;
        for anyone else, the default's and their own conversation's."""
        if ctx.is_admin:
            return await self.choice.history(count)
        mine = ("default", ctx.conversation)
        return [c for c in await self.choice.history(count * 10) if c.scope in mine][:count]

    @staticmethod
    def _scope(ctx: CommandContext, scope: str) -> str:
        """A change's scope as the sender reads it (another's conversation id: admins only)."""
        if scope == ctx.conversation and not ctx.is_admin:
            return "this conversation"
        return scope

    @staticmethod
    def _by(ctx: CommandContext, who: str) -> str:
        """Who made a change, as the sender may read it: the id for admins, "you" for the
        sender's own change, else nothing (other people's ids are shown to admins only)."""
        if ctx.is_admin:
            return f" by {who}"
        return " by you" if who == ctx.message.sender else ""

    def _name(self, ref: ModelRef) -> str:
        alias = self.registry.alias_of(ref)
        return f"{alias} ({ref})" if alias else str(ref)

    def _refuse(self, ctx: CommandContext, reply: str) -> str:
        self.log.warning(
            "command_refused",
            channel=ctx.message.channel,
            conversation=ctx.conversation,
            command=f"{ctx.name} {ctx.args}".strip(),
            error="admin only",
        )
        return reply

    def _audit(self, ctx: CommandContext, before: str, after: str, scope: str) -> None:
        self.log.info(
            "model_changed",
            channel=ctx.message.channel,
            conversation=ctx.conversation,
            by=ctx.message.sender,
            scope=scope,
            before=before,
            after=after,
        )


USAGE_DAYS = 30
TOP_SENDERS = 10


def _usage_line(totals: Totals) -> str:
    """One period's usage as /usage shows it."""
    turns = f"{totals.turns} turn{'' if totals.turns == 1 else 's'}"
    return (
        f"{totals.tokens:,} tokens ({totals.tokens_in:,} in, {totals.tokens_out:,} out), "
        f"${totals.cost:.4f}, {turns}"
    )


_SOURCES = {
    "conversation": "conversation's choice",
    "default": "global default",
    "config": "config",
}


def _local_state(model: ModelInfo) -> str:
    """An LM Studio model as /status shows it to admins: loaded or not, and the window used."""
    if not model.loaded:
        return f"{model.ref}: not loaded (LM Studio loads it on demand)"
    cut = (
        ""
        if model.context_window == model.configured_window
        else (f" (config says {model.configured_window})")
    )
    return f"{model.ref}: loaded, window {model.context_window} tokens{cut}"
