"""What the gateway knows without a config: the built-in default config text and the hosted
providers `models.mode: merge` offers (anthropic, openai, openrouter), keys from the environment."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

DEFAULT_CONFIG_TEXT = """\
// Switchboard gateway config (JSON5). This built-in default is used when BOT_CONFIG is unset;
// copy it to ./bot.json5 to change it. Strings may use ${VAR} from the environment ($${VAR}
// is a literal). Local-first with a hosted safety net: LM Studio answers, Anthropic steps in
// when the local box is down (set ANTHROPIC_API_KEY for that).
{
  agents: {
    defaults: {
      model: {
        primary: "lmstudio/minimax-m2.1-gs32",
        fallbacks: ["anthropic/claude-sonnet-4-5", "anthropic/claude-opus-4-5"]
      },
      models: {
        "lmstudio/minimax-m2.1-gs32": { alias: "Minimax" },
        "anthropic/claude-sonnet-4-5": { alias: "Sonnet" },
        "anthropic/claude-opus-4-5": { alias: "Opus" }
      },
      // timeoutSeconds: 120, compaction: { enabled: true, threshold: 0.8 }
    }
  },
  models: {
    // "merge" keeps the built-in hosted catalog (anthropic, openai, openrouter) as fallbacks.
    mode: "merge",
    providers: {
      lmstudio: {
        baseUrl: "http://127.0.0.1:1234/v1",
        apiKey: "lmstudio",
        api: "openai-responses",
        models: [
          {
            id: "minimax-m2.1-gs32",
            name: "MiniMax M2.1 GS32",
            reasoning: false,
            input: ["text"],
            cost: { input: 0, output: 0, cacheRead: 0, cacheWrite: 0 },
            contextWindow: 196608,
            maxTokens: 8192
          }
        ]
      }
    }
  },
  // channels: { whatsapp: { dmPolicy: "pairing" }, telegram: { mode: "webhook" } },
  // commands: { admins: ["whatsapp:+15551234567", "telegram:123456789"] },
}
"""


# The built-in hosted providers and the environment variable holding each one's API key.
CATALOG_KEYS = {
    "anthropic": "ANTHROPIC_API_KEY",
    "openai": "OPENAI_API_KEY",
    "openrouter": "OPENROUTER_API_KEY",
}


def key_variable(provider_id: str) -> str:
    """Where a provider's API key comes from: an environment variable or the config."""
    return CATALOG_KEYS.get(provider_id, f"models.providers.{provider_id}.apiKey")


def hosted_catalog(env: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """The hosted providers `merge` mode always offers, in config spelling; keys from `env`."""

    def spec(model_id: str, name: str, context: int, max_tokens: int) -> dict[str, Any]:
        return {"id": model_id, "name": name, "contextWindow": context, "maxTokens": max_tokens}

    def provider(url: str, api: str, pid: str, *models: dict[str, Any]) -> dict[str, Any]:
        key = env.get(CATALOG_KEYS[pid]) or None
        return {"baseUrl": url, "api": api, "apiKey": key, "models": list(models)}

    return {
        "anthropic": provider(
            "https://api.anthropic.com/v1/",
            "openai-completions",
            "anthropic",
            spec("claude-opus-4-5", "Claude Opus 4.5", 200000, 8192),
            spec("claude-sonnet-4-5", "Claude Sonnet 4.5", 200000, 8192),
        ),
        "openai": provider(
            "https://api.openai.com/v1",
            "openai-responses",
            "openai",
            spec("gpt-5.1", "GPT-5.1", 400000, 16384),
            spec("gpt-5-mini", "GPT-5 mini", 400000, 16384),
        ),
        "openrouter": provider(
            "https://openrouter.ai/api/v1",
            "openai-completions",
            "openrouter",
            spec("minimax/minimax-m2.1", "MiniMax M2.1", 196608, 8192),
            spec("moonshotai/kimi-k2", "Kimi K2", 131072, 8192),
        ),
    }
