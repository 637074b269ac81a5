"""Where config problems are: JSON5 text → data plus the line of every key; issues at lines.

The json5 library reports no key positions, so `key_lines` scans the text itself.
"""

from __future__ import annotations

import difflib
import re
import types
from collections.abc import Mapping
from typing import Any, Union, get_args, get_origin

import json5
from pydantic import BaseModel, ValidationError

from bot.errors import ConfigError, ConfigIssue

Loc = tuple[str | int, ...]

_SCALAR_END = frozenset(",:[]{}/\"'") | frozenset(" \t\r\n\f\v\u00a0\ufeff")
NOT_KEYS = frozenset({"source"})  # model fields the loader sets; never written in a file
_POSITION = re.compile(r"^<string>:(\d+) (.*)$", re.DOTALL)


def read_json5(text: str, *, source: str) -> tuple[dict[str, Any], dict[Loc, int]]:
    """Parse `text`; return the top-level object and `key_lines(text)`, or raise ConfigError."""
    lines, duplicates = key_lines(text)
    try:
        data = json5.loads(text, allow_duplicate_keys=False)
    except ValueError as exc:
        message, line = str(exc), None
        if match := _POSITION.match(message):
            line, message = int(match.group(1)), match.group(2)
        path = ""
        if message.startswith("Duplicate key") and duplicates:
            dup_loc, line = duplicates[0]
            path = render_loc(dup_loc)
            message = "this key appears twice in the same object; keep one"
        issue = ConfigIssue(file=source, path=path, message=message, line=line)
        raise ConfigError([issue]) from exc
    if not isinstance(data, dict):
        issue = ConfigIssue(file=source, path="", message="the config must be a JSON5 object { … }")
        raise ConfigError([issue])
    return data, lines


def render_loc(loc: Loc) -> str:
    """Spell a key path as in the config: `models.providers.lmstudio.models.0.contextWindow`."""
    parts = []
    for part in loc:
        text = str(part)
        parts.append(text if re.fullmatch(r"[\w$/-]+", text) else f'"{text}"')
    return ".".join(parts)


def key_lines(text: str) -> tuple[dict[Loc, int], list[tuple[Loc, int]]]:
    """Map each key path and array element path to its 1-based line; also list repeated keys."""
    lines: dict[Loc, int] = {}
    duplicates: list[tuple[Loc, int]] = []
    stack: list[tuple[Loc, list[int] | None]] = []  # (container path, [index] for arrays)
    pending: Loc = ()  # path of the value that comes next inside an object
    expect_key = False
    i, line, n = 0, 1, len(text)

    def value_start() -> Loc:
        if stack and (counter := stack[-1][1]) is not None:
            here = (*stack[-1][0], counter[0])
            lines.setdefault(here, line)
            return here
        return pending

    while i < n:
        c = text[i]
        if c == "\n":
            line, i = line + 1, i + 1
        elif c.isspace() or c in ":\ufeff":
            i += 1
        elif text.startswith("//", i):
            end = text.find("\n", i)
            i = n if end < 0 else end
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            end = n if end < 0 else end + 2
            line, i = line + text.count("\n", i, end), end
        elif c in "{[":
            stack.append((value_start(), [0] if c == "[" else None))
            expect_key, i = c == "{", i + 1
        elif c in "}]":
            if stack:
                stack.pop()
            expect_key, i = False, i + 1
        elif c == ",":
            if stack and (counter := stack[-1][1]) is not None:
                counter[0] += 1
            expect_key, i = bool(stack) and stack[-1][1] is None, i + 1
        else:
            end = _string_end(text, i) if c in "\"'" else _scalar_end(text, i)
            if expect_key and stack:
                key = _decode_key(text[i:end])
                pending = (*stack[-1][0], key)
                if pending in lines:
                    duplicates.append((pending, line))
                lines.setdefault(pending, line)
                expect_key = False
            else:
                value_start()
            line, i = line + text.count("\n", i, end), max(end, i + 1)
    return lines, duplicates


def _string_end(text: str, start: int) -> int:
    """Index just past the quoted string that opens at `start` (escapes honoured)."""
    quote, j = text[start], start + 1
    while j < len(text):
        if text[j] == "\\":
            j += 2
        elif text[j] == quote:
            return j + 1
        else:
            j += 1
    return len(text)


def _scalar_end(text: str, start: int) -> int:
    """Index just past an unquoted token (identifier key, number, true/false/null)."""
    j = start
    while j < len(text) and text[j] not in _SCALAR_END:
        j += 1
    return j


def _decode_key(token: str) -> str:
    """The key a token spells: quoted keys are decoded by json5 itself, identifiers kept as is."""
    if token[:1] in ("'", '"'):
        try:
            value = json5.loads(token)
        except ValueError:
            return token[1:-1]
        return str(value)
    return token


def issue_at(source: str, lines: Mapping[Loc, int], loc: Loc, message: str) -> ConfigIssue:
    """A ConfigIssue at the line of `loc`, or of its nearest ancestor found in the text."""
    line = next((lines[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in lines), None)
    return ConfigIssue(file=source, path=render_loc(loc), message=message, line=line)


def validation_problems(exc: ValidationError, root: type[BaseModel]) -> list[tuple[Loc, str]]:
    """Pydantic errors in config words: unknown keys with a guess, Literal choices spelled out."""
    errors = exc.errors(include_url=False)
    guessed: set[Loc] = set()
    problems: list[tuple[Loc, str]] = []
    for error in errors:
        loc: Loc = tuple(error["loc"])
        if error["type"] == "extra_forbidden":
            model = _model_at(root, loc[:-1])
            message = unknown_key(str(loc[-1]), model)
            problems.append((loc, message))
            if model is not None:
                guessed.update((*loc[:-1], g) for g in _close(str(loc[-1]), _keys(model)))
    for error in errors:
        loc = tuple(error["loc"])
        name = next((str(p) for p in reversed(loc) if isinstance(p, str)), "value")
        kind = error["type"]
        if kind == "extra_forbidden" or (kind == "missing" and loc in guessed):
            continue
        if kind == "missing":
            message = f"{render_loc(loc)} is required"
        elif kind == "literal_error":
            choices = re.findall(r"'([^']*)'", str(error.get("ctx", {}).get("expected", "")))
            message = f"{name} must be one of: {', '.join(choices)}"
        else:
            message = str(error["msg"])
        problems.append((loc, message))
    return problems


def _model_at(root: type[BaseModel], loc: Loc) -> type[BaseModel] | None:
    """The pydantic model that validates the object at `loc` (dict keys and indexes skipped)."""
    tp: Any = root
    for part in loc:
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            fields = tp.model_fields.items()
            tp = next((f.annotation for n, f in fields if part in (n, f.alias)), None)
        elif get_origin(tp) in (dict, list):
            tp = get_args(tp)[-1]
        else:
            return None
        if get_origin(tp) in (Union, types.UnionType):
            tp = next(a for a in get_args(tp) if a is not type(None))
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def _keys(model: type[BaseModel]) -> list[str]:
    return [f.alias or n for n, f in model.model_fields.items() if n not in NOT_KEYS]


def _close(word: str, choices: list[str]) -> list[str]:
    return difflib.get_close_matches(word, choices, n=1, cutoff=0.6)


def did_you_mean(word: str, choices: list[str]) -> str:
    """ "; did you mean 'x'?" for the closest choice, or "" when none is close."""
    return "".join(f"; did you mean '{c}'?" for c in _close(word, choices))


def unknown_key(key: str, model: type[BaseModel] | None) -> str:
    """The message for a key `model` does not accept: a guess, then every accepted key."""
    if model is None:
        return f"unknown key '{key}'"
    keys = _keys(model)
    return f"unknown key '{key}'{did_you_mean(key, keys)} (accepted: {', '.join(keys)})"
