"""Ordered failover across a turn's chain: the first model that answers wins.

Failover is turn-local: every call starts at the conversation's own model. A model that is
unavailable hands over to the next, and so does one whose server refused the request (a 400:
another server may take it), without opening its breaker; a context overflow does not (the
agent compacts and retries).
A model whose breaker is open is skipped without a network call; if every other model fails
too, the skipped ones are tried anyway, in order, rather than answer nothing.

Time is shared so a silent model cannot eat the turn: while another model could still answer,
a model gets its provider's `firstTokenSeconds` (default 30) to start answering, and the last
one gets what is left of the turn's budget (`deadline`). Once a model is answering it is never
cut off (only silence mid-stream, the provider's `timeoutSeconds`, ends it). A model that did
not start in the time it was due opens its breaker. When a breaker's cooldown is over, no
person's turn waits on the recovering model: a one-word probe runs in the background, and the
model serves again from the first turn after it answered.

A local model that LM Studio reports as not loaded is not made to load while a person waits,
when another model can answer: the turn goes on down the chain and one request (across all
processes) loads it in the background, within LM Studio's own JIT and TTL rules; the model
serves again once it is loaded. With no other model, the turn waits for the load.

Every call that got an answer is accounted (bot.usage): a turn's and a compaction's calls are
noted for the conversation's turn to write; a probe's (tiny, estimated) is written at once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from bot.errors import (
    AllModelsFailed,
    AnswerNotStarted,
    ContextOverflow,
    ModelError,
    ModelRefused,
    ModelUnavailable,
    Severity,
)
from bot.llm.breaker import CLEAN, DUE, OPEN, PROBE, Decision
from bot.llm.lmstudio import ProviderStates
from bot.llm.preview import PREVIEW_STEP_CHARS, StreamPreview
from bot.llm.registry import ModelInfo, ModelRegistry
from bot.llm.toolsupport import ToolSupport, refuses_tools
from bot.llm.types import (
    Completion,
    CompletionRequest,
    ModelRef,
    Preview,
    Provider,
    ToolChoice,
    ToolSpec,
    ToolStep,
    Usage,
)
from bot.logs import Logger
from bot.messages import Attachment, Turn
from bot.reads import Read
from bot.usage import PROBE_USAGE, Call, CallKind, estimate

LOAD_SECONDS = 600.0  # how long a background load may take (large models load for minutes)


class Breakers(Protocol):
    """What failover needs of the models' circuit breakers (bot.llm.breaker.RedisBreaker)."""

    probe_ms: int  # how long a recovering model's probe may take

    async def check(self, model: str) -> Decision: ...

    def read_decisions(self, models: list[str]) -> Read[dict[str, Decision]]: ...

    async def failure(self, model: str, *, severity: Severity, probe: bool) -> None: ...

    async def success(self, model: str, *, probe: bool) -> None: ...


class LocalModels(Protocol):
    """What failover (and a turn's first read) need of what LM Studio has loaded
    (bot.llm.lmstudio.LMStudioModels)."""

    def read(self) -> Read[dict[str, ProviderStates]]: ...

    async def refresh(self, *, force: bool = False) -> None: ...

    def stale(self) -> None: ...

    async def claim_load(self, ref: str, seconds: float) -> bool: ...

    async def release_load(self, ref: str) -> None: ...


class CallLedger(Protocol):
    """What failover tells the usage accounting of each answered call (bot.usage.RedisUsage)."""

    def note(self, conversation: str, model: str, usage: Usage, kind: CallKind) -> Call: ...

    async def record_background(self, call: Call) -> None: ...


@dataclass(frozen=True, slots=True)
class _Loop:
    """A turn's tool loop as far as a model call is concerned: what it may call, the steps
    so far, and whether it must answer in text now."""

    tools: tuple[ToolSpec, ...] = ()
    steps: tuple[ToolStep, ...] = ()
    choice: ToolChoice = "auto"


@dataclass(slots=True)
class _Failures:
    """Why each model of a turn's chain gave no answer, for the AllModelsFailed at its end."""

    reasons: list[str] = field(default_factory=list)
    tried: int = 0  # models called
    refusals: int = 0  # of those, how many refused the request itself

    def add(self, reason: str, *, tried: bool = True, refused: bool = False) -> None:
        self.reasons.append(reason)
        self.tried += tried
        self.refusals += refused

    def error(self) -> AllModelsFailed:
        refused = self.refusals > 0 and self.refusals == self.tried
        return AllModelsFailed("no model answered: " + "; ".join(self.reasons), refused=refused)


class FailoverClient:
    """Completes a conversation's prompt with the first model in its chain that answers."""

    def __init__(
        self,
        *,
        registry: ModelRegistry,
        providers: Mapping[str, Provider],
        log: Logger,
        breaker: Breakers | None = None,
        local: LocalModels | None = None,
        usage: CallLedger | None = None,
        tool_support: ToolSupport | None = None,
    ) -> None:
        self.registry = registry
        self.tool_support = tool_support or ToolSupport()
        self.usage = usage
        self.providers = providers
        self.log = log
        self.breaker = breaker
        self.local = local
        self._probes: set[asyncio.Task[None]] = set()

    async def close(self) -> None:
        """Stop the probes still running (their models stay open, to be probed again)."""
        for task in self._probes:
            task.cancel()
        await asyncio.gather(*self._probes, return_exceptions=True)

    async def complete(
        self,
        *,
        instructions: str,
        turns: Sequence[Turn],
        primary: ModelRef | None = None,
        conversation: str = "",
        max_output_tokens: int | None = None,
        breakers: Mapping[str, Decision] | None = None,
        deadline: float | None = None,
        purpose: CallKind = "turn",
        images: Sequence[Attachment] = (),
        preview: Preview | None = None,
        tools: Sequence[ToolSpec] = (),
        steps: Sequence[ToolStep] = (),
        tool_choice: ToolChoice = "auto",
    ) -> Completion:
        """Try each model of the chain in order; raise AllModelsFailed when none answers.

        `max_output_tokens` caps the answer below each model's own maxTokens. `breakers` are
        decisions read beforehand (`read_breakers`); other models are checked here.
        `deadline` (event-loop time): no model is waited on to start answering past it.
        `purpose`: what the call is for, as usage accounting files it.
        `images`: pictures for the last turn; only models whose `input` takes images are tried.
        `preview`: shown each attempt's final text as it streams; reset when an attempt that
        showed something fails, so the next model's text never follows the dead one's.
        `tools`, `steps`, `tool_choice`: the turn's tool loop (each model gets the steps in its
        own API's shape; one with `tools: false`, or that refused tools lately, gets none).
        """
        loop = _Loop(tools=tuple(tools), steps=tuple(steps), choice=tool_choice)
        failures = _Failures()
        chain = self.registry.chain(primary)
        if images:
            chain = [m for m in chain if m.images]
        chain = [m for m in chain if self._usable(m, conversation, failures)]
        skipped: list[ModelInfo] = []
        for index, model in enumerate(chain):
            if model.loaded is False and index + 1 < len(chain):
                self._background(self._load(model))
                skipped.append(model)
                self.log.info(
                    "model_skipped",
                    conversation=conversation,
                    model=str(model.ref),
                    error="not loaded; loading it in the background",
                )
                continue
            decision = (breakers or {}).get(str(model.ref), DUE)
            if decision == DUE:  # not read beforehand, or a probe to claim
                decision = await self.breaker.check(str(model.ref)) if self.breaker else CLEAN
            if decision == PROBE:
                self._background(self._probe(model))
            if decision in (OPEN, PROBE):
                skipped.append(model)
                self.log.info(
                    "model_skipped",
                    conversation=conversation,
                    model=str(model.ref),
                    error="breaker open" if decision == OPEN else "breaker open, probing",
                )
                continue
            completion = await self._attempt(
                model,
                instructions,
                turns,
                conversation,
                max_output_tokens,
                breaker=decision,
                following=[*chain[index + 1 :], *skipped],
                failures=failures,
                deadline=deadline,
                purpose=purpose,
                images=images,
                preview=preview,
                loop=loop,
            )
            if completion is not None:
                return completion
        for index, model in enumerate(skipped):  # every open model, tried anyway
            completion = await self._attempt(
                model,
                instructions,
                turns,
                conversation,
                max_output_tokens,
                breaker=OPEN,
                following=skipped[index + 1 :],
                failures=failures,
                deadline=deadline,
                purpose=purpose,
                images=images,
                preview=preview,
                loop=loop,
            )
            if completion is not None:
                return completion
        raise failures.error()

    def _usable(self, model: ModelInfo, conversation: str, failures: _Failures) -> bool:
        """Can this model be called at all? (A hosted one needs its key.)"""
        missing = self.providers[model.ref.provider].missing_key
        if missing is not None:
            failures.add(f"{model.ref}: {missing} is not set", tried=False)
            self.log.info(
                "model_skipped",
                conversation=conversation,
                model=str(model.ref),
                error=f"{missing} is not set",
            )
        return missing is None

    def read_breakers(self) -> Read[dict[str, Decision]] | None:
        """The breaker decisions of the configured chain, to read with other turn state."""
        if self.breaker is None:
            return None
        return self.breaker.read_decisions([str(m.ref) for m in self.registry.chain()])

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        """Run a probe or a load without a person waiting on it (stopped by `close`)."""
        task = asyncio.create_task(work)
        self._probes.add(task)
        task.add_done_callback(self._probes.discard)

    async def _load(self, model: ModelInfo) -> None:
        """Load a local model that is not loaded: one request, across all processes, that
        LM Studio answers once it has loaded the model (JIT, so its TTL rules apply)."""
        assert self.local is not None
        ref = str(model.ref)
        if not await self.local.claim_load(ref, LOAD_SECONDS):
            return  # another process (or an earlier turn here) is loading it
        started = time.perf_counter()
        self.log.info("model_loading", model=ref, provider=model.ref.provider)
        try:
            await self.providers[model.ref.provider].probe(model.ref.model, seconds=LOAD_SECONDS)
            await self._account_probe(ref)
            error = ""
        except (ModelUnavailable, ModelError) as exc:
            error = str(exc)
        await self.local.refresh(force=True)
        await self.local.release_load(ref)
        (self.log.warning if error else self.log.info)(
            "model_loaded",
            model=ref,
            outcome="failed" if error else "ok",
            ms=round((time.perf_counter() - started) * 1000, 1),
            error=error,
        )

    async def _probe(self, model: ModelInfo) -> None:
        """One probe: a model that starts answering closes its breaker; one that fails (or
        stays silent for its provider's timeout) re-opens it for longer."""
        assert self.breaker is not None
        ref, provider = str(model.ref), self.providers[model.ref.provider]
        # Within the probe's lease (150 s), so no other process probes the model meanwhile.
        seconds = min(provider.timeout_seconds, self.breaker.probe_ms / 1000 - 15)
        started = time.perf_counter()
        try:
            await provider.probe(model.ref.model, seconds=seconds)
        except (ModelRefused, ModelError) as exc:  # it answers, but disliked the probe: up
            await self.breaker.success(ref, probe=True)
            outcome, error = "ok", str(exc)
        except ModelUnavailable as exc:
            await self.breaker.failure(ref, severity=exc.severity, probe=True)
            outcome, error = "unavailable", str(exc)
        else:
            await self.breaker.success(ref, probe=True)
            await self._account_probe(ref)
            outcome, error = "ok", ""
        self.log.info(
            "model_probe",
            model=ref,
            provider=model.ref.provider,
            outcome=outcome,
            ms=round((time.perf_counter() - started) * 1000, 1),
            error=error,
        )

    async def _account_probe(self, ref: str) -> None:
        """A probe that reached the model: its tiny request, estimated (the stream is cut at
        the first token, before any usage is reported), on the model's day."""
        if self.usage is not None:
            await self.usage.record_background(self.usage.note("", ref, PROBE_USAGE, "probe"))

    def _first_token_wait(
        self, provider: Provider, following: Sequence[ModelInfo], deadline: float | None
    ) -> float | None:
        """How long this attempt may wait for the answer to start: the provider's
        firstTokenSeconds while another model could follow, else the rest of the turn (None:
        no limit but the provider's own timeout); never past the turn's deadline."""
        wait = provider.first_token_seconds if following else None
        if deadline is not None:
            left = max(0.0, deadline - asyncio.get_running_loop().time())
            wait = left if wait is None else min(wait, left)
        return wait

    async def _attempt(
        self,
        model: ModelInfo,
        instructions: str,
        turns: Sequence[Turn],
        conversation: str,
        max_output_tokens: int | None,
        *,
        breaker: Decision,
        following: Sequence[ModelInfo],
        failures: _Failures,
        deadline: float | None,
        purpose: CallKind = "turn",
        images: Sequence[Attachment] = (),
        preview: Preview | None = None,
        loop: _Loop | None = None,
    ) -> Completion | None:
        """One call to one model: its completion, or None after logging why it failed.

        `breaker` is what the breaker said before the call (open: tried anyway). A model that
        refuses the request's tools is asked again at once without them."""
        ref = str(model.ref)
        provider = self.providers[model.ref.provider]
        wait = self._first_token_wait(provider, following, deadline)
        if wait == 0:
            failures.add(f"{ref}: not tried, the turn's time was spent", tried=False)
            return None
        loop = loop or _Loop()
        offered = loop.tools if model.tools and self.tool_support.usable(ref) else ()
        request = CompletionRequest(
            model=model.ref.model,
            instructions=instructions,
            turns=turns,
            max_output_tokens=min(model.output_reserve, max_output_tokens or model.output_reserve),
            images=images,
            tools=offered,
            steps=loop.steps,
            tool_choice=loop.choice,
        )
        started = time.perf_counter()
        # A reasoning model on chat completions may reason in its text with no opening tag.
        hold = model.reasoning and model.api == "openai-completions"
        feed = (
            StreamPreview(preview, hold=hold, step_chars=PREVIEW_STEP_CHARS)
            if preview is not None
            else None
        )
        try:
            try:
                completion = await _streamed(provider, request, wait, feed)
            except ModelRefused as exc:
                if not offered or not refuses_tools(str(exc)):
                    raise
                await self.tool_support.refused(ref)
                self.log.warning(
                    "tools_refused", conversation=conversation, model=ref, error=str(exc)
                )
                request = dataclasses.replace(request, tools=())  # its steps go as text
                completion = await _streamed(provider, request, wait, feed)
        except ContextOverflow:
            if self.local is not None:  # perhaps loaded with a smaller context than planned
                await self.local.refresh(force=True)
            raise
        except ModelUnavailable as exc:
            if self.local is not None and "not loaded" in str(exc):
                self.local.stale()
            refused = isinstance(exc, ModelRefused)  # its server is up: the breaker stays closed
            failures.add(str(exc), refused=refused)
            # A model cut short by the turn's deadline had less than its due: not its fault.
            fair = not isinstance(exc, AnswerNotStarted) or (
                exc.waited >= provider.first_token_seconds
            )
            if self.breaker and fair and not refused:
                await self.breaker.failure(ref, severity=exc.severity, probe=False)
            self.log.warning(
                "model_attempt",
                conversation=conversation,
                model=ref,
                provider=model.ref.provider,
                outcome="refused" if refused else "unavailable",
                ms=round((time.perf_counter() - started) * 1000, 1),
                error=str(exc),
            )
            if following:  # a refusal is told once, in the event above
                self.log.warning(
                    "model_fallback",
                    conversation=conversation,
                    model=ref,
                    to=str(following[0].ref),
                    **({"outcome": "refused"} if refused else {"error": str(exc)}),
                )
            return None
        if self.breaker and breaker != CLEAN:
            await self.breaker.success(ref, probe=False)
        if self.usage is not None:
            chars = len(instructions) + sum(len(t.text) for t in turns)
            usage = estimate(
                completion.usage, prompt_chars=chars, answer_chars=len(completion.text)
            )
            self.usage.note(conversation, ref, usage, purpose)
        self.log.info(
            "model_attempt",
            conversation=conversation,
            model=completion.model_ref,
            provider=model.ref.provider,
            outcome="ok",
            ms=round((time.perf_counter() - started) * 1000, 1),
            tokens_in=completion.usage.tokens_in,
            tokens_out=completion.usage.tokens_out,
        )
        return completion


async def _streamed(
    provider: Provider, request: CompletionRequest, wait: float | None, feed: StreamPreview | None
) -> Completion:
    """The provider's completion; when it fails, what its stream showed is voided first."""
    try:
        completion = await provider.complete(request, first_token_seconds=wait, preview=feed)
    except Exception:
        if feed is not None:
            await feed.void()
        raise
    if feed is not None:
        await feed.settle()
    return completion
