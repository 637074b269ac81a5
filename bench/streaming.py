"""Streaming to Telegram: what drafts (sendMessageDraft) buy a private chat, and what they cost.

50 private Telegram chats write at once to one `bot serve --role all` process (Telegram in
webhook mode); a fake model streams each of them a short reasoning part, then a 300-token
answer at 30 tokens/s. Two runs, one after the other, alike in everything but
`channels.telegram.streaming`: "draft", then "off" (Redis flushed, a fresh gateway each). This
process hosts the fakes (model and Bot API) and posts the updates; the model's stream times and
the Bot API's call times share its time.monotonic clock. Redis is REDIS_URL or an embedded server.

Figures, per reply: first visible text = the chat's first non-empty draft (with streaming off:
its one message) - the model's first answer token; final = the chat's message - the end of the
model's stream; drafts and Bot API calls (every call from the first update posted on) per reply;
gateway CPU ms per reply = the `bot serve` process family's user + system CPU over the run /
replies. Checks: chats without exactly one message, drafts showing reasoning, drafts after
their chat's message. Run:
`.venv/bin/python -m bench.streaming [--chats 50] [--interval MS] [--profile] [--keep]`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import aiohttp
import redis.asyncio as aioredis

import bench
from bench.pipeline import (
    cpu_total,
    family,
    free_port,
    percentile,
    print_profile,
    spawn,
    start_profiler,
    stop,
    wait_ready,
)
from bot.redisdb import connect
from tests.fakes.openai_server import FakeOpenAI, Reply, Streamed
from tests.fakes.telegram_server import FakeTelegram, private_text_update
from tests.helpers import provider_block

Streaming = Literal["draft", "off"]

TOKENS_PER_S = 30
ANSWER_TOKENS = 300
MARKER = "SECRET-REASONING"
REASONING = f"The person wants a long answer. {MARKER} stays in here and never shows."
SENTENCE = "the gateway streams this answer to a private chat while the model writes it"
WORDS = SENTENCE.split()
ANSWER = " ".join(
    WORDS[n % len(WORDS)] + ("." if n % 15 == 14 else "") for n in range(ANSWER_TOKENS)
)
WEBHOOK_SECRET = "bench-webhook-secret"
FIRST_CHAT = 7001
ASKED = re.compile(r"chat (\d+):")  # the user text names its chat: "chat 7017: ..."
REPLY_WAIT = 60.0  # seconds, from the first update, for every reply
QUIET = 0.5  # after the last reply: no Bot API call for this long means the run is over
QUIET_WAIT = 10.0


def config_text(
    model_url: str, streaming: Streaming, max_concurrent: int, interval_ms: int = 500
) -> str:
    """The fake model as the only provider; Telegram open to everyone, drafts on or off."""
    return f"""{{
      agents: {{ defaults: {{
        model: {{ primary: "local/local-model", fallbacks: [] }},
        systemPrompt: "You are a test assistant.",
        timeoutSeconds: 120,
        maxConcurrent: {max_concurrent},
      }} }},
      models: {{ mode: "replace", providers: {{
        local: {provider_block(model_url, timeout=120)},
      }} }},
      channels: {{
        whatsapp: {{ enabled: false }},
        telegram: {{ dmPolicy: "open", streaming: "{streaming}", draftIntervalMs: {interval_ms} }},
      }},
    }}"""


def gateway_env(
    workdir: Path, port: int, redis_url: str, model: FakeOpenAI, telegram: FakeTelegram,
    streaming: Streaming, chats: int, interval_ms: int,
) -> dict[str, str]:  # fmt: skip
    """The environment of a `bot serve` pointed at the fakes (its config written beside)."""
    path = workdir / f"bot-{streaming}.json5"
    path.write_text(config_text(model.base_url, streaming, max(64, chats), interval_ms))
    data_dir = workdir / f"var-{streaming}"
    return {
        **bench.serve_env(workdir, config=path, port=port, data_dir=data_dir, redis_url=redis_url),
        "TELEGRAM_BOT_TOKEN": telegram.token,
        "TELEGRAM_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "TELEGRAM_API_BASE_URL": telegram.base_url,
    }


@dataclass(frozen=True, slots=True, kw_only=True)
class RunResult:
    """What one run (streaming on or off) measured."""

    streaming: Streaming
    chats: int
    replies: int  # chats that got a message
    first_text_s: list[float]  # per reply: first visible text - model's first answer token
    final_s: list[float]  # per reply: the message - the model's stream end
    drafts: int  # accepted sendMessageDraft calls, "Thinking…" (empty) ones included
    calls: Counter[str]  # Bot API calls from the first update on, by method
    cpu_s: float | None  # the gateway family's user + system CPU over the run
    duplicates: list[int]  # chats with other than one message
    reasoning_drafts: int  # drafts whose text shows the reasoning marker
    late_drafts: list[int]  # chats with a draft after their message
    undrafted: list[int]  # chats answered without a non-empty draft first (streaming "draft")
    seconds: float  # first update posted -> last reply

    def per_reply(self, count: float) -> float:
        return count / self.replies if self.replies else float("nan")

    @property
    def cpu_ms_per_reply(self) -> float | None:
        return None if self.cpu_s is None else self.per_reply(self.cpu_s * 1000)


def chat_of(streamed: Streamed) -> int | None:
    """The chat a model stream answered, from the user text the bench sent it."""
    found = ASKED.search(streamed.request.turn_texts[-1] if streamed.request.turn_texts else "")
    return int(found.group(1)) if found else None


async def post_updates(port: int, chat_ids: list[int]) -> None:
    """One private text message from each chat, all at once, as Telegram's webhook posts."""
    url = f"http://127.0.0.1:{port}/webhooks/telegram"
    headers = {"X-Telegram-Bot-Api-Secret-Token": WEBHOOK_SECRET}
    timeout = aiohttp.ClientTimeout(total=30)

    async def post(http: aiohttp.ClientSession, chat_id: int) -> None:
        update = private_text_update(
            chat_id=chat_id, user_id=chat_id, text=f"chat {chat_id}: tell me", update_id=chat_id
        )
        async with http.post(url, json=update, headers=headers) as response:
            if response.status != 200:
                raise SystemExit(f"the webhook answered {response.status} for chat {chat_id}")

    async with aiohttp.ClientSession(timeout=timeout) as http:
        await asyncio.gather(*(post(http, chat_id) for chat_id in chat_ids))


async def wait_for(condition: str, check: Callable[[], bool], within: float) -> None:
    """Poll `check()` until true; exit with `condition` in the message if `within` passes."""
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"waited {within:g} s for {condition}")
        await asyncio.sleep(0.02)


def logged(log: Path, event: str) -> bool:
    """Whether the gateway's log (JSON lines) has an `event` line."""
    with contextlib.suppress(OSError):
        for line in log.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError, AttributeError):
                if json.loads(line).get("event") == event:
                    return True
    return False


async def run_once(
    streaming: Streaming, chats: int, redis: aioredis.Redis, redis_url: str, workdir: Path,
    *, profile: bool = False, interval_ms: int = 500,
) -> RunResult:  # fmt: skip
    """A fresh gateway and fresh fakes; every chat writes at once; the figures of the run."""
    await redis.flushall()
    reply = Reply(text=ANSWER, reasoning=REASONING, token_delay=1 / TOKENS_PER_S)
    log = workdir / f"gateway-{streaming}.log"
    chat_ids = list(range(FIRST_CHAT, FIRST_CHAT + chats))
    async with (
        FakeOpenAI(models=["local-model"], default=reply) as model,
        FakeTelegram() as telegram,
    ):
        port = free_port()
        env = gateway_env(workdir, port, redis_url, model, telegram, streaming, chats, interval_ms)
        proc = await spawn(["-m", "bot", "serve", "--role", "all"], env, log)
        try:
            await wait_ready(proc, port, log)
            await wait_for("the worker to start", lambda: logged(log, "worker_started"), 30)
            pids = family(proc.pid)
            spy = None
            if profile:
                spy = await start_profiler(proc.pid, workdir / f"profile-{streaming}.txt")
            cpu_before = cpu_total(pids)
            started = time.monotonic()
            await post_updates(port, chat_ids)

            def answered() -> bool:
                return {m["chat_id"] for m in telegram.sent} >= set(chat_ids)

            try:
                await wait_for(f"{chats} replies", answered, REPLY_WAIT)
            except SystemExit as exc:
                print(f"  ({exc}: {len({m['chat_id'] for m in telegram.sent})} came; see {log})")
            last_reply = time.monotonic()
            cpu_after = cpu_total(pids)
            quiet_since = [len(telegram.calls), time.monotonic()]

            def quiet() -> bool:  # no Bot API call for QUIET seconds: late drafts would show
                if len(telegram.calls) != quiet_since[0]:
                    quiet_since[:] = [len(telegram.calls), time.monotonic()]
                return time.monotonic() - quiet_since[1] >= QUIET

            await wait_for("the Bot API to go quiet", quiet, QUIET_WAIT)
            if spy is not None:
                spy.proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
                await asyncio.wait_for(spy.proc.wait(), 30)
                print(f"\n{streaming}:")
                print_profile(spy.output)
        finally:
            code = await stop(proc)
        if code not in (0, -15):
            print(f"  (the gateway exited with {code}; see {log})")
        return summarise(streaming, chat_ids, model, telegram, started, last_reply,
                         cpu_before, cpu_after)  # fmt: skip


def summarise(
    streaming: Streaming, chat_ids: list[int], model: FakeOpenAI, telegram: FakeTelegram,
    started: float, last_reply: float, cpu_before: float | None, cpu_after: float | None,
) -> RunResult:  # fmt: skip
    """Per-reply figures from what the fakes recorded."""
    streams = {chat: s for s in model.streams if (chat := chat_of(s)) is not None}
    messages: dict[int, list[float]] = {chat: [] for chat in chat_ids}
    for sent in telegram.sent:
        messages.setdefault(int(sent["chat_id"]), []).append(float(sent["at"]))
    first_text, final = [], []
    late, undrafted = [], []
    for chat in chat_ids:
        stream, times = streams.get(chat), messages[chat]
        drafts = [d for d in telegram.drafts if int(d["chat_id"]) == chat]
        shown = [float(d["at"]) for d in drafts if str(d["visible"]).strip()]
        if times and any(float(d["at"]) > times[0] for d in drafts):
            late.append(chat)
        if times and not shown and streaming == "draft":
            undrafted.append(chat)
        if stream is None or not times:
            continue
        if stream.first_text is not None:
            first_text.append(min(shown or times[:1]) - stream.first_text)
        final.append(times[0] - stream.ended)
    calls = Counter(call.method for call in telegram.calls if call.at >= started)
    cpu = None if cpu_before is None or cpu_after is None else cpu_after - cpu_before
    return RunResult(
        streaming=streaming,
        chats=len(chat_ids),
        replies=sum(1 for times in messages.values() if times),
        first_text_s=first_text,
        final_s=final,
        drafts=len(telegram.drafts),
        calls=calls,
        cpu_s=cpu,
        duplicates=[chat for chat, times in messages.items() if len(times) != 1],
        reasoning_drafts=sum(
            1 for d in telegram.drafts if MARKER in str(d["text"]) or MARKER in str(d["visible"])
        ),
        late_drafts=late,
        undrafted=undrafted,
        seconds=last_reply - started,
    )


# -- report ------------------------------------------------------------------------------------


def p50_95(values: list[float]) -> str:
    return f"{percentile(values, 50):.2f} / {percentile(values, 95):.2f}"


def fixed(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def print_table(draft: RunResult, off: RunResult) -> None:
    """Draft vs off, side by side, and CPU per reply draft ÷ off."""
    head = f"{draft.chats} private chats at once, model {TOKENS_PER_S} tokens/s x {ANSWER_TOKENS}"
    print(f"\n{head:<62}{'draft':>15} {'off':>15}")
    both = (draft, off)
    rows = [
        ("replies (chats answered)", [f"{r.replies}/{r.chats}" for r in both]),
        (
            "first visible text - first token, p50 / p95 (s) *",
            [p50_95(r.first_text_s) for r in both],
        ),
        ("final message - model's stream end, p50 / p95 (s)", [p50_95(r.final_s) for r in both]),
        (
            'drafts per reply (incl. empty "Thinking…")',
            [fixed(r.per_reply(r.drafts)) for r in both],
        ),
        (
            "Bot API calls per reply (from the first update)",
            [fixed(r.per_reply(r.calls.total())) for r in both],
        ),
        *(
            (f"  {method}", [fixed(r.per_reply(r.calls[method])) for r in both])
            for method in sorted(set(draft.calls) | set(off.calls))
        ),
        ("gateway CPU per reply, user + sys (ms)", [fixed(r.cpu_ms_per_reply) for r in both]),
        ("first update -> last reply (s)", [fixed(r.seconds) for r in both]),
    ]
    for label, (a, b) in rows:
        print(f"  {label:<60}{a:>15} {b:>15}")
    cpu_d, cpu_o = draft.cpu_ms_per_reply, off.cpu_ms_per_reply
    if cpu_d is not None and cpu_o:
        print(f"  {'CPU per reply, draft / off':<60}{cpu_d / cpu_o:>15.2f}")
    print("  * first visible text: the first non-empty draft; with streaming off, the message")


def print_checks(draft: RunResult, off: RunResult) -> dict[str, bool]:
    """The must-be-zero counts, and issue #24's targets for the streaming run."""
    print(f"\n{'checks (each must be 0)':<62}{'draft':>15} {'off':>15}")
    for label, a, b in (
        ("chats without exactly one message", draft.duplicates, off.duplicates),
        ("chats with a draft after their message", draft.late_drafts, off.late_drafts),
        ("chats answered without a non-empty draft first (draft run)", draft.undrafted, []),
    ):
        which = f"  chats: {a} {b}" if a or b else ""
        print(f"  {label:<60}{len(a):>15} {len(b):>15}{which}")
    label = f"drafts showing {MARKER}"
    print(f"  {label:<60}{draft.reasoning_drafts:>15} {off.reasoning_drafts:>15}")
    cpu_d, cpu_o = draft.cpu_ms_per_reply, off.cpu_ms_per_reply
    met = {
        "first text <= first token + 0.6 s at p95": percentile(draft.first_text_s, 95) <= 0.6,
        "final <= model end + 0.2 s at p95": percentile(draft.final_s, 95) <= 0.2,
        "CPU per reply <= 1.15 x streaming off": cpu_d is not None
        and cpu_o is not None
        and cpu_d <= 1.15 * cpu_o,
        "0 duplicates": not draft.duplicates and not off.duplicates,
        "0 reasoning in drafts": draft.reasoning_drafts == 0,
        "0 drafts after the message": not draft.late_drafts,
        "every reply drafted first": not draft.undrafted,
    }
    print("\ntargets (the streaming run; duplicates: both)")
    for name, ok in met.items():
        print(f"  {name:<60}{'met' if ok else 'MISSED':>15}")
    return met


async def run(chats: int, workdir: Path, *, profile: bool = False, interval_ms: int = 500) -> None:
    async with bench.redis_url(workdir) as url:
        redis = connect(url, cluster=bench.is_cluster(), decode_responses=False, socket_timeout=10)
        try:
            draft = await run_once(
                "draft", chats, redis, url, workdir, profile=profile, interval_ms=interval_ms
            )
            off = await run_once("off", chats, redis, url, workdir, profile=profile)
        finally:
            await redis.aclose()
    print_table(draft, off)
    print_checks(draft, off)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--chats", type=int, default=50, help="private chats writing at once")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (gateway logs)")
    parser.add_argument(
        "--interval", type=int, default=500, help="channels.telegram.draftIntervalMs (500)"
    )
    parser.add_argument(
        "--profile", action="store_true", help="py-spy each gateway; print where its time went"
    )
    args = parser.parse_args()
    with bench.workdir("switchboard-streaming-", keep=args.keep) as workdir:
        bench.run(run(args.chats, workdir, profile=args.profile, interval_ms=args.interval))


if __name__ == "__main__":
    main()
