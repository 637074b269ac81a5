"""What one Redis carries: the Redis CPU one plain WhatsApp turn costs, so the turns/s one server
takes before it runs out of its one core (issue #28, item 4).

`--procs` client processes drive a plain turn's Redis work, and only that, against one
redis-server (REDIS_URL, else an embedded one; the database is flushed first). The work is the
gateway's own: its Script objects, key functions and argument builders (bot.intake, bot.worker,
bot.delivery, bot.memory, bot.usage, …), in the gateway's round trips, one NEW conversation a
turn (a distinct `whatsapp:+1555…` sender, as bench.pipeline's load):

  1. intake: RedisIntake.accept (ACCEPT + XADD to the ready stream, one pipeline)
  2. worker read: XREADGROUP, up to `--batch` less the turns running (each client process is
     one consumer, like Worker._read), with the acks of finished entries (ACK_OWNED) once
     bot.worker's ACK_EVERY has passed
  3. claim, one pipeline (Worker._claim): per entry read, a TAKE and behind it the turn's
     first reads (Agent.prefetch for a private chat): RATE spending the token only if the
     claim's lease is held (an open channel's non-admin sender) and memory STATE with the
     conversation's model choice in it; once a period (bot.llm's READ_EVERY), everyone's
     default model GET, one breaker HGETALL and the LM Studio state GET
  4. commit: COMMIT (two turns remembered, the reply queued) + the usage of one local-model call
     (RedisUsage.queue_record), through the process's group commit (bot.roundtrips: the turns
     of a client process that commit in the same loop iteration share one round trip)
  5. deliver + finish: FINISH, the ADVANCE of the one-chunk reply that finishes the turn (TAKE),
     through the group commit too
  + the log stream: one XADD of 16 events (about 6 a turn) every 3 turns per client.

Measured on the server between the start and the drained end: INFO cpu (used_cpu_sys +
used_cpu_user), INFO commandstats (every command, a script's own calls included; the bench's two
INFOs left out) and INFO stats total_reads_processed (round trips; a big pipeline may take more
than one read). The capacity figure is derived: turns/s at which this Redis is 90 % busy on its
core = 0.9 s / (Redis CPU seconds per turn). On a small VM (2 cores) the client processes and
Redis share the cores, so the achieved turns/s says how fast these clients went, not what Redis
can take: read the CPU per turn and the derived figure. `--rate` paces the clients (turns/s in
all) to see the cost at a given load rather than flat out.

Checked against reality: `python -m bench.turncost --rate 50 --seconds 2 --idle 1` runs a real
gateway against fakes and counts, with MONITOR, the commands each turn sends ("per turn, under
load": a turn's own plus the background work of those seconds, scripts' inner calls included).
This bench's commands per turn should be within about 10 % of that total; the difference left
is background work (polls, heartbeats, sweeps) and batching that depends on the rate.

    .venv/bin/python -m bench.redisload [--procs 2] [--seconds 10] [--rate N] [--batch 8]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import multiprocessing as mp
import os
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from multiprocessing.synchronize import Barrier, Event
from pathlib import Path
from typing import Any, cast

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import RedisCluster

import bench
from bot.access import RedisAccess
from bot.config import parse_config
from bot.delivery import Entry, head_key, outbox_key
from bot.intake import READY_STREAM, RedisIntake
from bot.llm.breaker import READ_EVERY as SHARED_EVERY
from bot.llm.breaker import breaker_key
from bot.llm.choice import DEFAULT_KEY, RedisModelChoice
from bot.llm.lmstudio import state_key
from bot.logs import ENTRY_EVENTS, EVENT_STREAM, make_logger
from bot.memory.store import RedisMemory
from bot.messages import InboundMessage, OutboundMessage, Turn
from bot.reads import Kept, Read
from bot.redisdb import connect, is_cluster
from bot.roundtrips import coalescer_for
from bot.scripts import load_scripts
from bot.usage import Call, Prices, RedisUsage
from bot.wakeups import GROUP, ensure_group, queue_acks
from bot.worker import COMMIT, FINISH, READ_BLOCK_MS, TAKE, Worker
from tests.helpers import redis_cluster

PREFIX = "whatsapp:+1555"  # bench.loadgen's measured senders
BOT_NUMBER = "whatsapp:+14155238886"
PROVIDER = "lmstudio"
MODEL = f"{PROVIDER}/local-model"
RATE_PER_MINUTE = 20  # access.ratePerMinute's default
LOG_EVERY = ENTRY_EVENTS // 6  # turns per XADD of ENTRY_EVENTS events (a turn logs about 6)
STREAM_MAX_LEN = 100_000  # logging.streamMaxLen's default (events)


@dataclass(slots=True)
class Tally:
    """One client process's count: turns finished (before the deadline, and in all) and any
    script reply that was not what a plain turn gets."""

    on_time: int = 0
    done: int = 0
    odd: Counter[str] | None = None


class Client:
    """One client process: intake and one worker consumer, doing a turn's Redis work."""

    def __init__(self, redis: aioredis.Redis, who: int, batch: int) -> None:
        log = make_logger(stream=io.StringIO(), as_json=True)
        self.redis = redis
        self.who = who
        self.batch = batch
        self.intake = RedisIntake(redis, log=log, ordered=not is_cluster(redis))
        self.memory = RedisMemory(redis)
        # The worker's own argument builders (lease ms, batch ids, outbox entries); nothing runs.
        self.worker = Worker(
            redis=redis, agent=cast(Any, None), memory=self.memory, senders={}, log=log,
            name=f"bench-{who}",
        )  # fmt: skip
        self.choice = RedisModelChoice(redis, cast(Any, None), ttl_seconds=self.memory.ttl_seconds)
        config = parse_config(
            '{ channels: { whatsapp: { dmPolicy: "open" } } }', source="bench", env={}
        )
        # The access check of an open channel's non-admin sender, as bench.pipeline's gateway.
        self.access = RedisAccess(
            redis, channels=config.channels, commands=config.commands,
            rate_per_minute=RATE_PER_MINUTE, log=log,
        )  # fmt: skip
        reads = self.access.read_sender("whatsapp", "c", lease="l", token="t").count
        self.prefetch_count = reads + self.state("c").count  # the access check, the state
        self._shared: Kept[Any] = Kept(None, every=SHARED_EVERY)  # the once-a-period reads
        prices = Prices(config)
        self.usage = RedisUsage(redis, prices=prices, log=log)
        self.call = Call(model=MODEL, kind="turn", tokens_in=420, tokens_out=12, local=True)
        self.events = "\n".join(event_lines())
        self.log_cap = max(1, STREAM_MAX_LEN // ENTRY_EVENTS)
        self.odd: Counter[str] = Counter()
        self.tally = Tally(odd=self.odd)

    def state(self, conversation: str) -> Read[Any]:
        """Memory STATE with the conversation's model choice riding in it (Agent)."""
        key, ttl = self.choice.key(conversation), self.choice.ttl_seconds
        return self.memory.read_state_with(conversation, [key], ttl)

    def prefetch(self, pipe: Any, conversation: str, lease: str, token: str) -> None:
        """The turn's first reads, queued behind its TAKE as Agent.prefetch does for a private
        chat (`prefetch_count` commands): RATE spending a token only if the lease is the
        claim's (RedisAccess.read_sender with lease and token), memory STATE with the model
        choice."""
        self.access.read_sender("whatsapp", conversation, lease=lease, token=token).queue(pipe)
        self.state(conversation).queue(pipe)

    @staticmethod
    def queue_shared(pipe: Any) -> None:
        """The reads a busy process makes once a period: everyone's default model, the
        breaker, LM Studio's state."""
        pipe.get(DEFAULT_KEY)
        pipe.hgetall(breaker_key(MODEL))
        pipe.get(state_key(PROVIDER))

    def shared(self) -> Read[Any]:
        """`queue_shared`'s reads when a period is due, else none (bot.reads.Kept)."""
        return self._shared.read(Read(self.queue_shared, 3, lambda replies: replies))

    def message(self, n: int) -> InboundMessage:
        """The n-th message of this client: a new conversation, as the WhatsApp adapter has it."""
        sender = f"{PREFIX}{self.who:02d}{n:06d}"
        return InboundMessage(
            channel="whatsapp", conversation=sender, sender=sender, text=f"hello {n}",
            platform_id=f"SM{uuid.uuid4().hex}", ts=time.time(), sender_name="Bench",
            meta={"to": BOT_NUMBER},
        )  # fmt: skip

    async def produce(self, messages: list[InboundMessage], slots: asyncio.Semaphore,
                      until: float, interval: float) -> None:  # fmt: skip
        """Accept messages until the deadline, paced every `interval` s (0: as fast as turns
        finish, `slots` bounding the backlog)."""
        start = time.monotonic()
        for n, message in enumerate(messages):
            if interval:
                await asyncio.sleep(max(0.0, start + n * interval - time.monotonic()))
            await slots.acquire()
            if time.monotonic() >= until:
                return
            await self.intake.accept(message)
        self.odd["messages_ran_out"] += 1

    async def consume(self, slots: asyncio.Semaphore, until: float) -> None:
        """Read, claim and run turns as Worker.run does, until the deadline and drained."""
        running: set[asyncio.Task[None]] = set()
        while True:
            if len(running) >= self.batch:
                await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                continue
            done = self.worker._acks_due()  # the entries of finished turns, once a period
            async with self.redis.pipeline(transaction=False) as pipe:
                queue_acks(pipe, self.worker.name, done)
                pipe.xreadgroup(
                    GROUP, self.worker.name, {READY_STREAM: ">"},
                    count=self.batch - len(running), block=100 if running else READ_BLOCK_MS,
                )  # fmt: skip
                replies = await pipe.execute()
            entries = [e for _, found in replies[-1] or [] for e in found]
            if not entries:
                if time.monotonic() > until and not running:
                    break
                continue
            conversations = [fields["conversation"] for _, fields in entries]
            claims = []
            async with self.redis.pipeline(transaction=False) as pipe:
                shared = self.shared()
                shared.queue(pipe)
                first = shared.count
                for conversation in conversations:
                    token = self.worker._token()
                    args = self.worker._take_args(token, "")
                    keys = self.worker._take_keys(conversation)
                    TAKE.queue(pipe, keys, args)
                    self.prefetch(pipe, conversation, keys[0], token)
                    claims.append((token, str(args[1])))
                replies = await pipe.execute()
            shared.decode(replies[:first])  # kept until the next period is due
            taken = replies[first :: 1 + self.prefetch_count]
            for (entry_id, _), conversation, (token, batch_id), reply in zip(
                entries, conversations, claims, taken, strict=True
            ):
                if not (isinstance(reply, list) and len(reply) > 1):
                    self.odd[f"take {reply!r}"] += 1
                    self.worker._done.append(entry_id)
                    continue
                task = asyncio.create_task(
                    self.turn(entry_id, conversation, token, batch_id, slots, until)
                )
                running.add(task)
                task.add_done_callback(running.discard)
        if self.worker._done:
            async with self.redis.pipeline(transaction=False) as pipe:
                queue_acks(pipe, self.worker.name, self.worker._done)
                await pipe.execute()

    def commit_call(
        self, conversation: str, token: str, batch_id: str, ref: str, *, fresh: bool = True
    ) -> tuple[list[str], list[Any], Entry]:
        """COMMIT's keys and arguments for a turn that remembers two turns (the message `ref`
        and the answer) and queues a one-chunk reply; and the reply's outbox entry. `fresh`:
        the turn found no memory (a new conversation's, as this bench's are)."""
        worker, memory, now = self.worker, self.memory, time.time()
        remember = [
            Turn(role="user", text="hello", ts=now, refs=(ref,)),
            Turn(role="assistant", text="ok", ts=now),
        ]
        reply = OutboundMessage(
            channel="whatsapp", conversation=conversation, text="ok", reply_to=ref
        )
        entry: Entry = worker.outbox.entry(reply)
        args: list[Any] = [
            token, batch_id, entry.to_json(), memory.ttl_seconds, entry.id, entry.at,
            worker.outbox.ttl_seconds, "1" if fresh else "",
            *(json.dumps(t.to_dict(), ensure_ascii=False) for t in remember),
        ]  # fmt: skip
        lease, batch = worker._take_keys(conversation)[:2]
        keys = [lease, batch, *memory.keys(conversation)]
        return [*keys, outbox_key(conversation), head_key(conversation)], args, entry

    def finish_call(
        self, conversation: str, token: str, batch_id: str, entry: Entry
    ) -> tuple[list[str], list[Any]]:
        """FINISH's keys and arguments: the one-chunk reply `entry` sent, the turn finished."""
        worker = self.worker
        lease = worker._take_keys(conversation)[0]
        now = int(time.time() * 1000)
        step = [token, entry.id, 1, 1, now, "1", worker.outbox.ttl_seconds]
        keys = [lease, outbox_key(conversation), head_key(conversation)]
        keys += worker._take_keys(conversation)
        return keys, step + worker._take_args(token, batch_id, checked=True)

    async def turn(self, entry_id: str, conversation: str, token: str, batch_id: str,
                   slots: asyncio.Semaphore, until: float) -> None:  # fmt: skip
        """Steps 4 and 5 of one claimed turn: commit, deliver and finish."""
        redis = self.redis
        keys, args, entry = self.commit_call(conversation, token, batch_id, f"SM{entry_id}")
        trips = coalescer_for(redis)  # group commit, as Worker._commit_turn and Outbox._step

        def commit(pipe: Pipeline) -> None:
            COMMIT.queue(pipe, keys, args)
            self.usage.queue_record(
                pipe, sender=conversation, conversation=conversation, calls=[self.call]
            )

        committed = (await trips.run(commit))[0]
        if committed != 2:
            self.odd[f"commit {committed!r}"] += 1

        keys, step = self.finish_call(conversation, token, batch_id, entry)
        replies = (await trips.run(lambda pipe: FINISH.queue(pipe, keys, step)))[0]
        if replies[0][0] != "empty" or replies[1:] != [["released"]]:
            self.odd[f"deliver/finish {replies!r}"] += 1

        self.tally.done += 1
        if time.monotonic() < until:
            self.tally.on_time += 1
        if self.tally.done % LOG_EVERY == 0:  # EventSink: ENTRY_EVENTS events an XADD
            await redis.xadd(
                EVENT_STREAM, {"e": self.events}, maxlen=self.log_cap, approximate=True
            )
        self.worker._done.append(entry_id)
        slots.release()


def event_lines() -> list[str]:
    """ENTRY_EVENTS JSON lines shaped like a plain turn's events (message_received, …)."""
    names = ["message_received", "turn_started", "model_usage", "turn_done", "reply_sent"]
    return [
        json.dumps(
            {
                "ts": "2025-01-01T12:00:00.000000Z",
                "level": "info",
                "event": names[i % len(names)],
                "logger": "bot",
                "conversation": f"{PREFIX}0000{i:03d}",
                "channel": "whatsapp",
                "model": MODEL,
                "tokens_in": 420,
                "tokens_out": 12,
                "ms": 812,
                "text": "hello",
            }
        )
        for i in range(ENTRY_EVENTS)
    ]


async def client_main(url: str, who: int, opts: dict[str, float], ready: Barrier, go: Event,
                      results: Any) -> None:  # fmt: skip
    redis = connect(url, cluster=bool(opts["cluster"]), socket_timeout=30)
    try:
        await redis.ping()
        await load_scripts(redis)  # as a worker does at start: no EVALSHA refused mid-turn
        client = Client(redis, who, int(opts["batch"]))
        rate, seconds = opts["rate"] / opts["procs"], opts["seconds"]
        budget = int(rate * seconds * 1.05) + 50 if rate else int(opts["max_turns"])
        messages = [client.message(n) for n in range(budget)]  # built before the clock starts
        await asyncio.to_thread(ready.wait)
        await asyncio.to_thread(go.wait)
        until = time.monotonic() + seconds
        slots = asyncio.Semaphore(int(opts["batch"]) * 2)
        await asyncio.gather(
            client.produce(messages, slots, until, 1 / rate if rate else 0),
            client.consume(slots, until),
        )
        results.put((client.tally.on_time, client.tally.done, dict(client.odd)))
    finally:
        await redis.aclose()


def client_process(url: str, who: int, opts: dict[str, float], ready: Barrier, go: Event,
                   results: Any) -> None:  # fmt: skip
    bench.run(client_main(url, who, opts, ready, go, results))


Counts = tuple[float, Counter[str], int]  # CPU s, calls by command, reads


async def server_counts(redis: aioredis.Redis) -> dict[str, Counts]:
    """Each node's CPU seconds, calls by command (INFO's left out) and reads processed, one
    INFO a node (a plain server: one node)."""
    nodes: list[Any] = [None]
    if is_cluster(redis):
        nodes = cast("RedisCluster", redis).get_primaries()
    found: dict[str, Counts] = {}
    for node in nodes:
        if node is None:
            info = await redis.execute_command("INFO", "cpu", "commandstats", "stats")
        else:
            info = await cast("RedisCluster", redis).execute_command(
                "INFO", "cpu", "commandstats", "stats", target_nodes=node
            )
        commands = Counter(
            {
                k.removeprefix("cmdstat_"): int(v["calls"])
                for k, v in info.items()
                if k.startswith("cmdstat_") and k != "cmdstat_info"
            }
        )
        cpu = float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
        found["server" if node is None else node.name] = (
            cpu,
            commands,
            int(info["total_reads_processed"]),
        )
    return found


async def measure(opts: dict[str, float], workdir: Any) -> None:
    procs = int(opts["procs"])
    async with contextlib.AsyncExitStack() as stack:
        if opts["cluster"]:
            url = stack.enter_context(redis_cluster(Path(workdir)))
        else:
            url = await stack.enter_async_context(bench.redis_url(workdir))
        redis = connect(url, cluster=bool(opts["cluster"]), socket_timeout=30)
        try:
            await redis.flushdb()
            await ensure_group(redis)
            version = redis_version(await redis.info("server"))
            ctx = mp.get_context("spawn")
            ready, go, results = ctx.Barrier(procs + 1), ctx.Event(), ctx.Queue()
            workers = [
                ctx.Process(target=client_process, args=(url, who, opts, ready, go, results))
                for who in range(procs)
            ]
            for proc in workers:
                proc.start()
            await asyncio.to_thread(ready.wait, 120)
            before = await server_counts(redis)
            started = time.monotonic()
            go.set()
            tallies = [await asyncio.to_thread(results.get, True, 120) for _ in workers]
            elapsed = time.monotonic() - started
            after = await server_counts(redis)
            for proc in workers:
                await asyncio.to_thread(proc.join, 30)
        finally:
            await redis.aclose()
    report(opts, version, tallies, before, after, elapsed)


def redis_version(info: dict[str, Any]) -> str:
    """INFO server's version (a cluster client answers per node)."""
    if "redis_version" in info:
        return str(info["redis_version"])
    return str(next(iter(info.values()))["redis_version"])


def report(
    opts: dict[str, float],
    version: str,
    tallies: list[tuple[int, int, dict[str, int]]],
    before: dict[str, Counts],
    after: dict[str, Counts],
    elapsed: float,
) -> None:
    on_time = sum(t[0] for t in tallies)
    turns = sum(t[1] for t in tallies)
    odd: Counter[str] = Counter()
    for t in tallies:
        odd.update(t[2])
    if not turns:
        raise SystemExit("no turn finished")
    cpu = {node: after[node][0] - before[node][0] for node in after}
    by_command: Counter[str] = Counter()
    for node in after:
        by_command.update(after[node][1] - before[node][1])
    commands = sum(by_command.values())
    reads = sum(after[n][2] - before[n][2] for n in after) - len(after)  # the closing INFOs
    per_turn = sum(cpu.values()) / turns
    busiest = max(cpu, key=lambda node: cpu[node])
    paced = f"paced at {opts['rate']:g}/s in all" if opts["rate"] else "flat out"
    at_once = f"up to {int(opts['batch'])} turns each at once"
    where = f"a {len(after)}-node Redis Cluster" if opts["cluster"] else "one Redis"
    print(f"redis {version}, {where}; {int(opts['procs'])} client processes ({paced}), "
          f"{at_once}; {os.cpu_count()} CPU cores here")  # fmt: skip
    print(f"turns: {turns} ({on_time} in the {opts['seconds']:g} s window, the rest while "
          f"draining; {elapsed:.1f} s in all)")  # fmt: skip
    print(f"achieved: {on_time / opts['seconds']:,.0f} turns/s (clients and Redis sharing "
          f"{os.cpu_count()} cores: not a capacity figure)")  # fmt: skip
    for node in sorted(cpu):
        print(f"Redis CPU ({node}): {cpu[node]:.2f} s over {elapsed:.1f} s "
              f"({cpu[node] / elapsed * 100:.0f} % of a core), "
              f"{cpu[node] / turns * 1e6:.1f} µs per turn")  # fmt: skip
    print(f"Redis commands per turn: {commands / turns:.2f} (scripts' inner calls included, "
          f"INFO excluded)")  # fmt: skip
    print("  " + ", ".join(f"{c} {n / turns:.2f}" for c, n in by_command.most_common()))
    print(f"round trips per turn: {reads / turns:.2f} (total_reads_processed, all nodes)")
    bound = cpu[busiest] / turns
    print(f"=> the busiest node ({busiest}) at 90 % of one core: ≈ {0.9 / bound:,.0f} turns/s "
          f"(0.9 s / {bound * 1e6:.1f} µs); all nodes: {per_turn * 1e6:.1f} µs a turn")  # fmt: skip
    if odd:
        print(f"unexpected replies (not a plain turn's): {dict(odd)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--procs", type=int, default=2, help="client processes")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rate", type=float, default=0, help="turns/s in all (0: flat out)")
    parser.add_argument("--batch", type=int, default=8, help="turns a client runs at once")
    parser.add_argument("--max-turns", type=int, default=40_000, help="per process, flat out")
    parser.add_argument(
        "--cluster", action="store_true", help="a 3-node Redis Cluster (tests.helpers)"
    )
    args = parser.parse_args()
    opts = {
        "procs": args.procs, "seconds": args.seconds, "rate": args.rate, "batch": args.batch,
        "max_turns": args.max_turns, "cluster": args.cluster,
    }  # fmt: skip
    with bench.workdir("switchboard-redisload-", keep=False) as workdir:
        bench.run(measure(opts, workdir))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
