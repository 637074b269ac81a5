"""What LM Studio really has loaded, read from its REST API and shared through Redis.

For each configured (non-catalog) provider, one process at a time asks the server's native
API which models are loaded and with what context: `GET {root}/api/v1/models` (LM Studio
0.4+: `loaded_instances[].config.context_length`, `max_context_length`, `capabilities.vision`),
else `GET {root}/api/v0/models` (`state`, `max_context_length`). A server without that API
(llama.cpp's llama-server, vLLM, a proxy) keeps the configured numbers, quietly. The answer is
stored in Redis, refreshed about every minute and after a context overflow or a "not loaded"
error, and read with each turn's state so every process plans with the same window.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import aiohttp
import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError

from bot.config import ProviderConfig
from bot.logs import Logger
from bot.reads import Kept, Read

REFRESH_SECONDS = 60.0
HTTP_SECONDS = 3.0
READ_EVERY = 1.0  # s: a busy process reads the shared states once a second, not every turn


@dataclass(frozen=True, slots=True, kw_only=True)
class LocalModelState:
    """What an LM Studio server says of one model it has on disk."""

    loaded: bool
    context: int | None  # the loaded instance's context length; None: not loaded or not said
    max_context: int | None  # the most the model supports
    vision: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LocalModelState:
        return cls(
            loaded=bool(data.get("loaded")),
            context=_int(data.get("context")),
            max_context=_int(data.get("max_context")),
            vision=data.get("vision") if isinstance(data.get("vision"), bool) else None,
        )

    def describe(self) -> str:
        """For people: "loaded, 8192-token context" / "not loaded"."""
        if not self.loaded:
            return "not loaded"
        return f"loaded, {self.context}-token context" if self.context else "loaded"


# One provider's models by id, as its server reported them.
ProviderStates = dict[str, LocalModelState]


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def state_key(provider: str) -> str:
    return f"lmstudio:{{{provider}}}:models"


def api_root(base_url: str) -> str:
    """`http://127.0.0.1:1234/v1` → `http://127.0.0.1:1234` (where LM Studio's own API lives)."""
    root = base_url.rstrip("/")
    return root.removesuffix("/v1")


def parse_v1(body: Any) -> ProviderStates:
    """`GET /api/v1/models` (LM Studio 0.4+): models[] with key and loaded_instances."""
    found: ProviderStates = {}
    for model in body.get("models") or [] if isinstance(body, dict) else []:
        if not isinstance(model, dict) or model.get("type") == "embedding" or not model.get("key"):
            continue
        contexts = [
            _int((instance.get("config") or {}).get("context_length"))
            for instance in model.get("loaded_instances") or []
            if isinstance(instance, dict)
        ]
        known = [c for c in contexts if c]
        vision = (model.get("capabilities") or {}).get("vision")
        found[str(model["key"])] = LocalModelState(
            loaded=bool(contexts),
            context=min(known) if known else None,
            max_context=_int(model.get("max_context_length")),
            vision=vision if isinstance(vision, bool) else None,
        )
    return found


def parse_v0(body: Any) -> ProviderStates:
    """`GET /api/v0/models` (LM Studio 0.3.6+): data[] with id, state and max_context_length
    (and, in later builds, loaded_context_length)."""
    found: ProviderStates = {}
    for model in body.get("data") or [] if isinstance(body, dict) else []:
        if not isinstance(model, dict) or model.get("type") == "embeddings" or not model.get("id"):
            continue
        loaded = model.get("state") == "loaded"
        found[str(model["id"])] = LocalModelState(
            loaded=loaded,
            context=_int(model.get("loaded_context_length")) if loaded else None,
            max_context=_int(model.get("max_context_length")),
            vision=True if model.get("type") == "vlm" else None,
        )
    return found


class NoNativeApi(Exception):
    """The server answered, but has no LM Studio REST API (llama-server, vLLM, a proxy)."""


async def fetch_states(
    http: aiohttp.ClientSession, provider: ProviderConfig, *, seconds: float = HTTP_SECONDS
) -> ProviderStates:
    """Ask the provider's server what it has loaded. Raises NoNativeApi for a server without
    LM Studio's API, aiohttp.ClientError / TimeoutError when it cannot be reached."""
    root = api_root(provider.base_url)
    headers = {"Authorization": f"Bearer {provider.api_key}"} if provider.api_key else {}
    for path, parse in (("/api/v1/models", parse_v1), ("/api/v0/models", parse_v0)):
        async with http.get(
            root + path, headers=headers, timeout=aiohttp.ClientTimeout(total=seconds)
        ) as response:
            if response.status != 200:
                continue
            try:
                body = await response.json(content_type=None)
            except ValueError:
                continue
            if isinstance(body, dict) and ("models" in body or "data" in body):
                return parse(body)
    raise NoNativeApi(root)


class LMStudioModels:
    """The loaded state of every local provider's models, shared by all processes."""

    def __init__(
        self,
        *,
        redis: aioredis.Redis,
        providers: Mapping[str, ProviderConfig],
        http: aiohttp.ClientSession,
        log: Logger,
        refresh_seconds: float = REFRESH_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis = redis
        self.providers = dict(providers)
        self.http = http
        self.log = log
        self.refresh_seconds = refresh_seconds
        self.clock = clock
        self.states: dict[str, ProviderStates] = {}  # what this process last read or fetched
        self._stale = asyncio.Event()
        self._read = Kept(self.states, every=READ_EVERY)  # the shared states, read at most so often

    def state(self, provider: str, model: str) -> LocalModelState | None:
        """The last known state of `provider/model` (None: unknown, or no LM Studio API)."""
        return self.states.get(provider, {}).get(model)

    def read(self) -> Read[dict[str, ProviderStates]]:
        """The stored states of every local provider, to read with a turn's other state: from
        Redis at most every READ_EVERY s (another process's refresh is seen that much later;
        this process's own are kept as it makes them), else what this process knows."""
        ids = list(self.providers)

        def queue(pipe: Pipeline) -> None:
            for pid in ids:
                pipe.get(state_key(pid))

        def decode(replies: list[Any]) -> dict[str, ProviderStates]:
            for pid, raw in zip(ids, replies, strict=True):
                self.states[pid] = _decode(raw)
            return self.states

        return self._read.read(Read(queue=queue, count=len(ids), decode=decode))

    async def claim_load(self, ref: str, seconds: float) -> bool:
        """Take the right to load `ref` (provider/model) for `seconds`, across all processes."""
        provider = ref.split("/", 1)[0]
        try:
            claimed = await self.redis.set(
                f"{state_key(provider)}:loading:{ref}", "1", nx=True, px=int(seconds * 1000)
            )
        except (RedisError, OSError):
            return False
        return bool(claimed)

    async def release_load(self, ref: str) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self.redis.delete(f"{state_key(ref.split('/', 1)[0])}:loading:{ref}")

    def stale(self) -> None:
        """Something suggests the loaded models changed (overflow, "not loaded"): look again."""
        self._stale.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Refresh every `refresh_seconds` (sooner when `stale`) until `stop` is set."""
        while not stop.is_set():
            await self.refresh(force=self._stale.is_set())
            self._stale.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.refresh_seconds):
                    waiters = [asyncio.ensure_future(e.wait()) for e in (stop, self._stale)]
                    try:
                        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        for waiter in waiters:
                            waiter.cancel()

    async def refresh(self, *, force: bool = False) -> None:
        """Ask each local provider's server, unless another process did within the period
        (`force`: ask now); store what changed and say so (`model_state` events)."""
        lock_ms = int(self.refresh_seconds * 900)
        for pid, provider in self.providers.items():
            try:
                if not force and not await self.redis.set(
                    f"{state_key(pid)}:lock", "1", nx=True, px=lock_ms
                ):
                    await self._load(pid)  # another process asked within the period
                    continue
            except (RedisError, OSError) as exc:
                self.log.warning("model_state_unavailable", provider=pid, error=str(exc))
                continue
            try:
                fetched = await fetch_states(self.http, provider)
            except NoNativeApi:
                fetched = {}
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                self.log.debug("model_state_unreachable", provider=pid, error=str(exc))
                continue
            await self._store(pid, fetched)

    async def _load(self, pid: str) -> None:
        with contextlib.suppress(RedisError, OSError):
            self.states[pid] = _decode(await self.redis.get(state_key(pid)))

    async def _store(self, pid: str, fetched: ProviderStates) -> None:
        previous = self.states.get(pid)
        if previous is None:
            with contextlib.suppress(RedisError, OSError):
                previous = _decode(await self.redis.get(state_key(pid)))
        self.states[pid] = fetched
        body = json.dumps({m: s.to_dict() for m, s in fetched.items()})
        try:
            await self.redis.set(state_key(pid), body, ex=int(self.refresh_seconds * 5))
        except (RedisError, OSError) as exc:
            self.log.warning("model_state_unavailable", provider=pid, error=str(exc))
        for model, state in fetched.items():
            if (previous or {}).get(model) != state:
                self.log.info(
                    "model_state",
                    model=f"{pid}/{model}",
                    state=state.describe(),
                    context=state.context,
                    max_context=state.max_context,
                )


def _decode(raw: str | bytes | None) -> ProviderStates:
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        return {}
    if not isinstance(data, dict):
        return {}
    return {m: LocalModelState.from_dict(s) for m, s in data.items() if isinstance(s, dict)}
