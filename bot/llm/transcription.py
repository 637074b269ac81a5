"""Voice notes to text through a provider's OpenAI-compatible `/v1/audio/transcriptions`.

Beside the providers because it is the openai SDK's other use: the same provider config gives
the base URL, key and timeouts (OpenAI's `whisper-1`, a local whisper server, Groq…). Vendor
errors become ModelUnavailable (ModelRefused for a 400) here, never carrying the audio or its text.
"""

from __future__ import annotations

import mimetypes

import openai

from bot.config import ProviderConfig
from bot.llm.providers import openai_client, translate
from bot.llm.types import ModelRef, Transcript, Usage
from bot.messages import Attachment


class OpenAITranscriber:
    """Transcribes audio with one model of one provider, through the openai SDK."""

    def __init__(self, ref: ModelRef, config: ProviderConfig) -> None:
        self.ref = ref
        self.client = openai_client(config)

    async def transcribe(self, audio: Attachment) -> Transcript:
        """The text of a voice note (multipart `file` + `model`); raise ModelUnavailable (or
        ModelRefused) when the server cannot."""
        content_type = audio.content_type.split(";")[0].strip() or "application/octet-stream"
        name = "voice" + (mimetypes.guess_extension(content_type) or ".ogg")
        try:
            result = await self.client.audio.transcriptions.create(
                model=self.ref.model, file=(name, audio.data, content_type)
            )
        except openai.OpenAIError as exc:
            raise translate(exc, str(self.ref)) from exc
        usage = getattr(result, "usage", None)  # {type: "duration", seconds} where given
        seconds = getattr(usage, "seconds", None) or (result.model_extra or {}).get("duration")
        return Transcript(
            text=result.text.strip(),
            seconds=float(seconds) if isinstance(seconds, int | float) else None,
            usage=_tokens(usage),
        )

    async def close(self) -> None:
        await self.client.close()


def _tokens(usage: object) -> Usage:
    """The tokens a server reported ({type: "tokens", input_tokens, output_tokens}, as
    gpt-4o-transcribe does); estimated when it reported a duration (whisper-1) or nothing."""
    tokens_in = getattr(usage, "input_tokens", None)
    tokens_out = getattr(usage, "output_tokens", None)
    if isinstance(tokens_in, int) and isinstance(tokens_out, int):
        return Usage(tokens_in=tokens_in, tokens_out=tokens_out)
    return Usage(estimated=True)
