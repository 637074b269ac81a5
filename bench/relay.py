"""The yardstick for `bench.pipeline`: the least a WhatsApp-to-LLM relay has to do.

POST /webhooks/whatsapp: verify the Twilio signature (twilio's RequestValidator over
public URL + path and query, the gateway's rule), answer empty TwiML at once, then in a
background task make one model call (openai SDK, Responses API, no stream) and send one reply
through Twilio's Messages API (twilio's async client). No Redis, no ordering, no dedupe, no
memory, no retries. GET /readyz answers 200 once listening. Runs on uvloop, like the gateway.

Run: `python -m bench.relay --port P --public-url URL --model-url URL --twilio-url URL ...`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from urllib.parse import parse_qsl

from aiohttp import web
from openai import AsyncOpenAI
from twilio.request_validator import RequestValidator
from twilio.rest import Client

import bench
from channels.whatsapp import TwilioHttpClient

TWIML = b'<?xml version="1.0" encoding="UTF-8"?><Response/>'


class Relay:
    """One webhook route and the clients it uses, built once."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.public_url = args.public_url.rstrip("/")
        self.validator = RequestValidator(args.auth_token)
        self.model = args.model
        self.sender = args.sender
        self.openai = AsyncOpenAI(base_url=args.model_url, api_key=args.api_key, max_retries=0)
        self.twilio = Client(args.account_sid, args.auth_token, http_client=TwilioHttpClient())
        self.twilio.api.base_url = args.twilio_url.rstrip("/")
        self.tasks: set[asyncio.Task[None]] = set()
        self.failures = 0

    async def webhook(self, request: web.Request) -> web.Response:
        """Verify, answer at once, reply in the background."""
        body = await request.read()
        form = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        url = f"{self.public_url}{request.path_qs}"
        signature = request.headers.get("X-Twilio-Signature", "")
        if not signature or not self.validator.validate(url, form, signature):
            return web.Response(status=403, text="bad signature")
        task = asyncio.create_task(self.reply(form.get("From", ""), form.get("Body", "")))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return web.Response(body=TWIML, content_type="text/xml")

    async def reply(self, to: str, text: str) -> None:
        """One model call, one Twilio message; failures are only counted."""
        try:
            response = await self.openai.responses.create(
                model=self.model, input=text, stream=False
            )
            await self.twilio.messages.create_async(
                to=to, from_=self.sender, body=response.output_text or "(empty)"
            )
        except Exception:  # noqa: BLE001 - a yardstick: count, never crash
            self.failures += 1

    async def close(self) -> None:
        """Cancel replies in flight and close the clients."""
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.openai.close()
        http = self.twilio.http_client
        if getattr(http, "session", None) is not None:
            await http.session.close()


async def readyz(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def serve(args: argparse.Namespace) -> None:
    """Serve on 127.0.0.1 until SIGTERM or SIGINT."""
    relay = Relay(args)
    app = web.Application()
    app.router.add_post("/webhooks/whatsapp", relay.webhook)
    app.router.add_get("/readyz", readyz)
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", args.port, backlog=1024).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        with contextlib.suppress(Exception):
            await relay.close()
        print(f"relay stopped; reply failures: {relay.failures}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--public-url", required=True, help="the URL the webhooks are signed for")
    parser.add_argument("--model-url", required=True, help="OpenAI-compatible base URL (…/v1)")
    parser.add_argument("--model", default="local-model")
    parser.add_argument("--api-key", default="sk-test-local")
    parser.add_argument("--twilio-url", required=True, help="Twilio REST API base URL")
    parser.add_argument("--account-sid", required=True)
    parser.add_argument("--auth-token", required=True)
    parser.add_argument("--sender", default="whatsapp:+14155238886")
    bench.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
