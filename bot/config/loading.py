"""Loading a config: read the JSON5, substitute ${VAR} from the environment given, merge the
built-in hosted catalog, validate against the schema, and report every problem at once with
file, line and key path."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from bot.config.catalog import DEFAULT_CONFIG_TEXT, hosted_catalog
from bot.config.schema import BUILT_IN_SOURCE, Config, default_model_choice, split_ref
from bot.config.source import (
    Loc,
    did_you_mean,
    issue_at,
    read_json5,
    render_loc,
    unknown_key,
    validation_problems,
)
from bot.errors import ConfigError


def load_config(path: str | os.PathLike[str] | None, env: Mapping[str, str]) -> Config:
    """Load the config file at `path`, or the built-in default when `path` is None or empty."""
    if path is None or not os.fspath(path):
        return parse_config(DEFAULT_CONFIG_TEXT, source=BUILT_IN_SOURCE, env=env)
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"{file} does not exist; create it or unset BOT_CONFIG")
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{file} cannot be read ({exc.__class__.__name__})") from exc
    return parse_config(text, source=str(file), env=env)


def parse_config(text: str, *, source: str, env: Mapping[str, str]) -> Config:
    """Parse JSON5 `text` into a resolved Config, or raise ConfigError listing every issue."""
    raw, lines = read_json5(text, source=source)
    problems: list[tuple[Loc, str]] = []
    data = _substitute(raw, (), env, problems)
    if "source" in data:
        problems.append((("source",), unknown_key("source", Config)))
        del data["source"]
    models = data.get("models", {})
    if isinstance(models, dict) and models.get("mode") != "replace":
        providers = models.get("providers", {})
        if isinstance(providers, dict):
            data["models"] = {**models, "providers": _merge(hosted_catalog(env), providers)}
    _default_model(
        data, configured=raw.get("models", {}).get("providers") if _is_dict(raw) else None
    )
    problems += _reference_problems(data)
    config: Config | None = None
    try:
        config = Config.model_validate({**data, "source": source}, by_name=False)
    except ValidationError as exc:
        problems += validation_problems(exc, Config)
    if problems or config is None:
        issues = [issue_at(source, lines, loc, message) for loc, message in problems]
        raise ConfigError(sorted(issues, key=lambda issue: issue.line or 0))
    return config


def _is_dict(value: object) -> bool:
    return isinstance(value, dict)


def _default_model(data: dict[str, Any], *, configured: object) -> None:
    """A file without `agents.defaults.model` gets the local-first chain, led by its own model.

    The primary is the first model of the first provider the file configures (the seed's
    "other OpenAI-compatible proxies" block has only `local`), else LM Studio's; models
    whose provider does not exist (no `lmstudio` block, `replace` mode) are left out.
    """
    agents = data.get("agents", {})
    defaults = agents.get("defaults", {}) if isinstance(agents, dict) else None
    models = data.get("models", {})
    resolved = models.get("providers") if isinstance(models, dict) else None
    if not isinstance(defaults, dict) or "model" in defaults or not isinstance(resolved, dict):
        return
    default = default_model_choice()
    chain = [default.primary, *default.fallbacks]
    for pid, entry in (configured if isinstance(configured, dict) else {}).items():
        listed = entry.get("models") if isinstance(entry, dict) else None
        first = listed[0] if isinstance(listed, list) and listed else None
        if isinstance(first, dict) and isinstance(first.get("id"), str):
            chain[0] = f"{pid}/{first['id']}"
            break
    chain = [ref for ref in chain if split_ref(ref)[0] in resolved]
    if chain:
        data["agents"] = {
            **agents,
            "defaults": {**defaults, "model": {"primary": chain[0], "fallbacks": chain[1:]}},
        }


_VAR = re.compile(r"\$(\$?)\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _substitute(value: Any, loc: Loc, env: Mapping[str, str], out: list[tuple[Loc, str]]) -> Any:
    """Replace ${VAR} in every string (not keys); `$${VAR}` stays a literal `${VAR}`."""
    if isinstance(value, dict):
        return {k: _substitute(v, (*loc, k), env, out) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, (*loc, i), env, out) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match[str]) -> str:
        escaped, name = match.groups()
        if escaped:
            return "${" + name + "}"
        if name not in env:
            out.append((loc, f"{name} is not set (used at {render_loc(loc)})"))
            return ""
        return env[name]

    return _VAR.sub(replace, value)


def _merge(catalog: dict[str, dict[str, Any]], configured: dict[str, Any]) -> dict[str, Any]:
    """Configured providers override catalog ones field by field; `models` merge by `id`.

    Configured models come first so error locations keep the file's indexes.
    """
    merged: dict[str, Any] = dict(catalog)
    for pid, entry in configured.items():
        base = catalog.get(pid)
        if base is None or not isinstance(entry, dict):
            merged[pid] = entry
            continue
        mine = entry.get("models", [])
        if isinstance(mine, list):
            ids = {m.get("id") for m in mine if isinstance(m, dict)}
            mine = [*mine, *(m for m in base["models"] if m["id"] not in ids)]
        merged[pid] = {**base, **entry, "models": mine}
    return merged


def _reference_problems(data: Mapping[str, Any]) -> list[tuple[Loc, str]]:
    """Model refs must name a resolved provider; aliases must be unique (case-insensitive)."""
    models = data.get("models")
    providers = models.get("providers") if isinstance(models, dict) else None
    ids = sorted(providers) if isinstance(providers, dict) else []
    agents = data.get("agents")
    defaults = agents.get("defaults") if isinstance(agents, dict) else None
    if not isinstance(defaults, dict):
        return []
    here: Loc = ("agents", "defaults")
    refs: list[tuple[Loc, object]] = []
    choice = defaults.get("model")
    if isinstance(choice, dict):
        refs.append(((*here, "model", "primary"), choice.get("primary")))
        fallbacks = choice.get("fallbacks")
        if isinstance(fallbacks, list):
            refs += [((*here, "model", "fallbacks", i), r) for i, r in enumerate(fallbacks)]
    else:
        refs.append(((*here, "model"), choice))
    entries = defaults.get("models")
    entries = entries if isinstance(entries, dict) else {}
    refs += [((*here, "models", ref), ref) for ref in entries]
    compaction = defaults.get("compaction")
    if isinstance(compaction, dict):
        refs.append(((*here, "compaction", "model"), compaction.get("model")))
    media = defaults.get("media")
    if isinstance(media, dict):
        refs.append(((*here, "media", "transcriptionModel"), media.get("transcriptionModel")))

    problems: list[tuple[Loc, str]] = []
    for loc, ref in refs:
        if not isinstance(ref, str):
            continue  # absent, or a type error pydantic reports
        provider, model = split_ref(ref)
        if not provider or not model:
            problems.append((loc, f"'{ref}' is not a model ref; write it as provider/model"))
        elif provider not in ids:
            hint = did_you_mean(provider, ids)
            known = ", ".join(ids) or "none"
            problems.append((loc, f"unknown provider '{provider}'{hint} (providers: {known})"))
    seen: dict[str, str] = {}
    for ref, entry in entries.items():
        alias = entry.get("alias") if isinstance(entry, dict) else None
        if not isinstance(alias, str):
            continue
        if (first := seen.setdefault(alias.casefold(), ref)) != ref:
            message = f"alias '{alias}' is already used by '{first}'; aliases must be unique"
            problems.append(((*here, "models", ref, "alias"), message))
    return problems
