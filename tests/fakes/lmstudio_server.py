"""A fake LM Studio: the OpenAI-compatible API plus LM Studio's own REST API.

`GET /api/v1/models` (LM Studio 0.4+) and `GET /api/v0/models` (0.3.6+) in the shapes of
LM Studio's developer docs, a model that is loaded with some context length or not at all,
JIT loading (a request for a model that is not loaded waits for the load, then is answered)
and the context length enforced with LM Studio's overflow error.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Literal

from aiohttp import web

from tests.fakes.openai_server import FakeOpenAI, Recorded, Reply

RestApi = Literal["v1", "v0"] | None  # None: a server without it (llama-server, vLLM)


class FakeLMStudio(FakeOpenAI):
    """LM Studio serving one model, loaded at `loaded_context` tokens (None: not loaded)."""

    def __init__(
        self,
        *,
        model: str,
        loaded_context: int | None = 8192,
        max_context: int = 131072,
        jit_context: int = 4096,
        jit_delay: float = 0.0,
        rest_api: RestApi = "v1",
        vision: bool = False,
        default: Reply | None = None,
    ) -> None:
        super().__init__(models=[model], default=default, context_window=loaded_context)
        self.model = model
        self.max_context = max_context
        self.jit_context = jit_context  # the context a JIT load gets (LM Studio's default)
        self.jit_delay = jit_delay
        self.rest_api = rest_api
        self.vision = vision
        self.loads: list[float] = []  # when each JIT load finished (time.monotonic())
        self._loading: asyncio.Task[None] | None = None

    @property
    def loaded_context(self) -> int | None:
        return self.context_window

    def unload(self) -> None:
        """The model is evicted (its TTL ran out, or someone ran `lms unload`)."""
        self.context_window = None
        self._loading = None

    def _add_routes(self, app: web.Application) -> None:
        if self.rest_api == "v1":
            app.router.add_get("/api/v1/models", self._v1_models)
        if self.rest_api is not None:  # LM Studio 0.4 still serves v0
            app.router.add_get("/api/v0/models", self._v0_models)

    async def _before_answer(self, recorded: Recorded) -> None:
        """JIT: a request for a model that is not loaded loads it first (one load at a time)."""
        if self.context_window is not None:
            return
        if self._loading is None:
            self._loading = asyncio.create_task(self._load())
        await asyncio.shield(self._loading)

    async def _load(self) -> None:
        await self._sleep(self.jit_delay)
        self.context_window = self.jit_context
        self.loads.append(time.monotonic())

    async def _v1_models(self, request: web.Request) -> web.Response:
        await self._record(request)
        loaded = self.context_window
        instances = [{"id": self.model, "config": {"context_length": loaded}}] if loaded else []
        entry: dict[str, Any] = {
            "type": "llm",
            "publisher": "lmstudio-community",
            "key": self.model,
            "display_name": self.model,
            "architecture": "minimax",
            "quantization": {"name": "Q4_K_M", "bits_per_weight": 4},
            "size_bytes": 123456789,
            "params_string": "230B",
            "loaded_instances": instances,
            "max_context_length": self.max_context,
            "format": "gguf",
            "capabilities": {"vision": self.vision, "trained_for_tool_use": True},
            "description": None,
        }
        embedding = {
            "type": "embedding",
            "publisher": "gaianet",
            "key": "text-embedding-nomic-embed-text-v1.5",
            "display_name": "Nomic Embed Text v1.5",
            "quantization": {"name": "F16", "bits_per_weight": 16},
            "size_bytes": 274290560,
            "params_string": None,
            "loaded_instances": [],
            "max_context_length": 2048,
            "format": "gguf",
        }
        return web.json_response({"models": [entry, embedding]})

    async def _v0_models(self, request: web.Request) -> web.Response:
        await self._record(request)
        entry = {
            "id": self.model,
            "object": "model",
            "type": "vlm" if self.vision else "llm",
            "publisher": "lmstudio-community",
            "arch": "minimax",
            "compatibility_type": "gguf",
            "quantization": "Q4_K_M",
            "state": "loaded" if self.context_window else "not-loaded",
            "max_context_length": self.max_context,
        }
        return web.json_response({"object": "list", "data": [entry]})
