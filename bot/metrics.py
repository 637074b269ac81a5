"""Prometheus metrics, derived from the structured events so the two never disagree.

`Metrics.observe` is an EventHub sink: each event updates its counters. Gauges that are
state rather than events (inbox depth, breaker states) are read from Redis at scrape time.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

TURN_BUCKETS = (0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120)
BREAKER_VALUE = {"closed": 0, "half-open": 1, "open": 2}


class Metrics:
    """One process's metrics in its own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.received = Counter(
            "switchboard_messages_received", "Messages stored by intake", ["channel"], registry=r
        )
        self.spooled = Counter(
            "switchboard_messages_spooled",
            "Messages kept in the local spool while Redis was down",
            ["channel"],
            registry=r,
        )
        self.spool_drained = Counter(
            "switchboard_spool_drained", "Spooled messages moved into Redis", registry=r
        )
        self.shed = Counter(
            "switchboard_webhooks_shed",
            "Webhooks past the process's in-flight limit (503, or WhatsApp into the spool)",
            ["channel"],
            registry=r,
        )
        self.rejected = Counter(
            "switchboard_messages_rejected", "Messages refused", ["channel", "reason"], registry=r
        )
        self.turns = Counter("switchboard_turns", "Model turns", ["outcome"], registry=r)
        self.turn_seconds = Histogram(
            "switchboard_turn_seconds", "Model turn latency", buckets=TURN_BUCKETS, registry=r
        )
        self.attempts = Counter(
            "switchboard_model_attempts",
            "Calls to models",
            ["provider", "model", "outcome"],
            registry=r,
        )
        self.fallbacks = Counter(
            "switchboard_model_fallbacks", "Turns handed to the next model", ["model"], registry=r
        )
        self.compactions = Counter("switchboard_compactions", "Compactions", ["result"], registry=r)
        self.tokens = Counter(
            "switchboard_tokens",
            "Tokens of every model call (reported, else estimated), cached input apart",
            ["model", "direction"],
            registry=r,
        )
        self.cost = Counter(
            "switchboard_cost_usd",
            "Cost of model calls from the configured prices (USD)",
            ["model"],
            registry=r,
        )
        self.replies = Counter(
            "switchboard_replies_sent", "Replies delivered", ["channel"], registry=r
        )
        self.send_failures = Counter(
            "switchboard_send_failures", "Replies not delivered", ["channel"], registry=r
        )
        self.commands = Counter("switchboard_commands", "Chat commands", ["outcome"], registry=r)
        self.inbox = Gauge("switchboard_inbox_depth", "Wake-ups waiting for a worker", registry=r)
        self.breakers = Gauge(
            "switchboard_breaker_state", "0 closed, 1 half-open, 2 open", ["model"], registry=r
        )

    def observe(self, event: MutableMapping[str, Any], _: str) -> None:
        """Count one event (an EventHub sink)."""
        name = event.get("event")
        channel = str(event.get("channel") or "")
        if name == "message_received":
            self.received.labels(channel).inc()
        elif name == "message_spooled":
            self.spooled.labels(channel).inc()
        elif name == "spool_drained" and isinstance(count := event.get("count"), int):
            self.spool_drained.inc(count)
        elif name == "webhook_shed":
            self.shed.labels(channel).inc()
        elif name == "message_rejected":
            self.rejected.labels(channel, str(event.get("reason") or "")).inc()
        elif name in ("turn_finished", "turn_failed"):
            self.turns.labels("ok" if name == "turn_finished" else "failed").inc()
            if name == "turn_finished" and isinstance(event.get("ms"), int | float):
                self.turn_seconds.observe(event["ms"] / 1000)
        elif name == "model_attempt":
            model = str(event.get("model") or "")
            self.attempts.labels(
                str(event.get("provider") or ""), model, str(event.get("outcome") or "")
            ).inc()
        elif name == "model_usage":  # bot.usage's accounting of one call (probes included)
            model = str(event.get("model") or "")
            for direction in ("in", "out"):
                if isinstance(count := event.get(f"tokens_{direction}"), int):
                    self.tokens.labels(model, direction).inc(count)
            if isinstance(cached := event.get("cached_in"), int) and cached:
                self.tokens.labels(model, "cached_in").inc(cached)
            if isinstance(cost := event.get("cost"), int | float):
                self.cost.labels(model).inc(cost)
        elif name == "model_fallback":
            self.fallbacks.labels(str(event.get("model") or "")).inc()
        elif name in ("compaction", "compaction_failed", "history_trimmed"):
            self.compactions.labels(name).inc()
        elif name == "reply_sent":
            self.replies.labels(channel).inc()
        elif name == "send_failed":
            self.send_failures.labels(channel).inc()
        elif name in ("command", "command_refused"):
            self.commands.labels(str(event.get("outcome") or "refused")).inc()

    def set_state(self, *, inbox: int, breakers: dict[str, str]) -> None:
        self.inbox.set(inbox)
        for model, state in breakers.items():
            self.breakers.labels(model).set(BREAKER_VALUE.get(state, 0))

    def render(self) -> bytes:
        return generate_latest(self.registry)
