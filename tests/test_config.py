"""Tests for bot.config: the seed's JSON5 blocks, ${VAR}, the hosted catalog and located errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.config import DEFAULT_CONFIG_TEXT, Config, ModelChoice, load_config, parse_config
from bot.config.source import key_lines
from bot.errors import ConfigError, ConfigIssue

DATA = Path(__file__).parent / "data" / "config"
SEED_LOCAL = DATA / "seed-local-stack.json5"
LOCAL_CHAIN = ModelChoice(
    primary="lmstudio/minimax-m2.1-gs32",
    fallbacks=["anthropic/claude-sonnet-4-5", "anthropic/claude-opus-4-5"],
)


def issues_of(text: str, env: dict[str, str] | None = None) -> list[ConfigIssue]:
    """Parse `text` expecting failure; return the issues."""
    with pytest.raises(ConfigError) as caught:
        parse_config(text, source="bot.json5", env=env or {})
    return caught.value.issues


def line_of(text: str, needle: str) -> int:
    """1-based line of the first line containing `needle`."""
    return next(n for n, line in enumerate(text.splitlines(), 1) if needle in line)


# --- the seed's blocks -------------------------------------------------------------------------


def test_seed_local_stack_loads() -> None:
    """The seed's "best local stack" block loads unchanged with its LM Studio provider."""
    config = load_config(SEED_LOCAL, env={})
    assert config.source == str(SEED_LOCAL)
    assert config.agents.defaults.model == ModelChoice(primary="lmstudio/minimax-m2.1-gs32")
    lmstudio = config.providers()["lmstudio"]
    assert (lmstudio.base_url, lmstudio.api, lmstudio.api_key) == (
        "http://127.0.0.1:1234/v1",
        "openai-responses",
        "lmstudio",
    )
    spec = config.model_spec("lmstudio", "minimax-m2.1-gs32")
    assert spec is not None
    assert (spec.name, spec.context_window, spec.max_tokens) == ("MiniMax M2.1 GS32", 196608, 8192)
    assert config.agents.defaults.models["anthropic/claude-opus-4-5"].alias == "Opus"


def test_seed_hybrid_loads() -> None:
    """The hybrid block gives a hosted primary with the local model and Opus as fallbacks."""
    config = load_config(DATA / "seed-hybrid.json5", env={"ANTHROPIC_API_KEY": "sk-ant"})
    assert config.agents.defaults.model == ModelChoice(
        primary="anthropic/claude-sonnet-4-5",
        fallbacks=["lmstudio/minimax-m2.1-gs32", "anthropic/claude-opus-4-5"],
    )
    assert config.providers()["anthropic"].api_key == "sk-ant"
    assert config.agents.defaults.models["lmstudio/minimax-m2.1-gs32"].alias == "MiniMax Local"


def test_seed_other_proxy_loads_with_default_model_choice() -> None:
    """The proxy block has no agents section: its own model leads, hosted fallbacks follow."""
    config = load_config(DATA / "seed-other-proxy.json5", env={})
    assert config.agents.defaults.model == ModelChoice(
        primary="local/my-local-model", fallbacks=LOCAL_CHAIN.fallbacks
    )
    assert config.providers()["local"].base_url == "http://127.0.0.1:8000/v1"
    assert {"anthropic", "openai", "openrouter", "local"} <= set(config.providers())
    assert config.agents.defaults.timeout_seconds == 120


# --- built-in default ----------------------------------------------------------------------------


def test_no_path_gives_built_in_default() -> None:
    """Without a file the built-in local-first config is used, with aliases and the catalog."""
    for path in (None, ""):
        config = load_config(path, env={})
        assert config.source == "<built-in default>"
        assert config.agents.defaults.model == LOCAL_CHAIN
        aliases = {ref: e.alias for ref, e in config.agents.defaults.models.items()}
        assert aliases == {
            "lmstudio/minimax-m2.1-gs32": "Minimax",
            "anthropic/claude-sonnet-4-5": "Sonnet",
            "anthropic/claude-opus-4-5": "Opus",
        }
        assert config.models.mode == "merge"


def test_default_text_matches_seed_provider_block() -> None:
    """DEFAULT_CONFIG_TEXT's lmstudio provider is the seed's, and its defaults are sensible."""
    default = parse_config(DEFAULT_CONFIG_TEXT, source="x", env={})
    seed = load_config(SEED_LOCAL, env={})
    assert default.providers()["lmstudio"] == seed.providers()["lmstudio"]
    assert "markdown" in default.agents.defaults.system_prompt
    assert default.channels.whatsapp.dm_policy == "pairing"
    assert default.channels.telegram.text_chunk_limit == 4000
    assert default.session.idle_days == 30
    assert default.logging.include_content is False


def test_empty_object_is_all_defaults() -> None:
    """`{}` is a valid config: every field has a default; the chain keeps only real providers."""
    config = parse_config("{}", source="x", env={})
    assert config.agents.defaults.model == ModelChoice(
        primary=LOCAL_CHAIN.fallbacks[0], fallbacks=LOCAL_CHAIN.fallbacks[1:]
    )
    assert config.agents.defaults.compaction.threshold == 0.8
    assert config.commands.model_switch == "admins"


def test_model_may_be_a_plain_ref() -> None:
    """`model: "p/m"` normalises to a ModelChoice without fallbacks."""
    config = parse_config('{agents: {defaults: {model: "openai/gpt-5.1"}}}', source="x", env={})
    assert config.agents.defaults.model == ModelChoice(primary="openai/gpt-5.1")


def test_python_construction_uses_field_names() -> None:
    """Code (tests, other modules) can build a Config with snake_case names."""
    config = Config(source="t")
    assert config.models.providers == {}
    assert config.model_spec("lmstudio", "x") is None


# --- missing file and syntax ---------------------------------------------------------------------


def test_missing_file_names_it(tmp_path: Path) -> None:
    """A path that does not exist is a ConfigError naming the file and BOT_CONFIG."""
    missing = tmp_path / "nope.json5"
    expected = r"nope\.json5 does not exist; create it or unset BOT_CONFIG"
    with pytest.raises(ConfigError, match=expected):
        load_config(missing, env={})


def test_json5_syntax_error_has_line() -> None:
    """A JSON5 syntax error becomes one issue with its line."""
    text = '{\n  models: {\n    mode: "merge",,\n  }\n}'
    [issue] = issues_of(text)
    assert issue.line == 3
    assert issue.file == "bot.json5"
    assert "Unexpected" in issue.message


def test_duplicate_key_is_located() -> None:
    """The same key twice in one object is an issue at the second one."""
    [issue] = issues_of("{\n  session: {\n    idleDays: 5,\n    idleDays: 6,\n  },\n}")
    assert (issue.path, issue.line) == ("session.idleDays", 4)


def test_top_level_must_be_an_object() -> None:
    """A JSON5 array or scalar at the top is rejected."""
    [issue] = issues_of("[1, 2]")
    assert "object" in issue.message


# --- ${VAR} --------------------------------------------------------------------------------------


def test_env_substitution_in_strings() -> None:
    """${VAR} is replaced inside longer strings too; $${VAR} stays literal."""
    text = """{
      agents: {defaults: {systemPrompt: "Hi ${NAME}, cost $${PRICE}"}},
      models: {providers: {lmstudio: {baseUrl: "http://${HOST}:1234/v1", apiKey: "Bearer ${TOKEN}",
        api: "openai-responses"}}},
    }"""
    env = {"NAME": "Ada", "HOST": "gpu.lan", "TOKEN": "t0k"}
    config = parse_config(text, source="x", env=env)
    assert config.agents.defaults.system_prompt == "Hi Ada, cost ${PRICE}"
    lmstudio = config.providers()["lmstudio"]
    assert (lmstudio.base_url, lmstudio.api_key) == ("http://gpu.lan:1234/v1", "Bearer t0k")


def test_missing_env_var_names_variable_and_path() -> None:
    """An unset ${VAR} is an issue naming the variable, the key path and the line."""
    text = '{\n  models: {providers: {\n    anthropic: {apiKey: "${ANTHROPIC_API_KEY}"},\n  }},\n}'
    [issue] = issues_of(text)
    assert issue.message == (
        "ANTHROPIC_API_KEY is not set (used at models.providers.anthropic.apiKey)"
    )
    assert (issue.path, issue.line) == ("models.providers.anthropic.apiKey", 3)


# --- strict, located errors ----------------------------------------------------------------------


def test_misspelt_key_in_seed_block_suggests_and_locates() -> None:
    """`basUrl` in the seed block is reported at its line with a did-you-mean for baseUrl."""
    text = SEED_LOCAL.read_text().replace("baseUrl", "basUrl")
    [issue] = issues_of(text)
    assert issue.path == "models.providers.lmstudio.basUrl"
    assert "did you mean 'baseUrl'?" in issue.message
    assert issue.line == line_of(text, "basUrl")
    assert str(issue).startswith(f"bot.json5:{issue.line}: models.providers.lmstudio.basUrl:")


def test_snake_case_keys_are_unknown_in_files() -> None:
    """Files use the camelCase spelling; Python names are not accepted keys."""
    [issue] = issues_of("{session: {idle_days: 10}}")
    assert issue.path == "session.idle_days"
    assert "did you mean 'idleDays'?" in issue.message


def test_wrong_type_is_located() -> None:
    """A string where a number belongs is an issue at that key (no silent coercion)."""
    [issue] = issues_of('{\n  session: {\n    idleDays: "30",\n  },\n}')
    assert (issue.path, issue.line) == ("session.idleDays", 3)
    assert "number" in issue.message


def test_unknown_api_lists_accepted_values() -> None:
    """An unknown `api` lists the accepted values."""
    text = SEED_LOCAL.read_text().replace('"openai-responses"', '"openai-chat"')
    [issue] = issues_of(text)
    assert issue.message == "api must be one of: openai-responses, openai-completions"
    assert issue.line == line_of(text, "openai-chat")


def test_every_issue_is_reported_at_once() -> None:
    """A file with several mistakes reports each, in line order, with its line."""
    with pytest.raises(ConfigError) as caught:
        load_config(DATA / "many-issues.json5", env={})
    found = {(i.path, i.line) for i in caught.value.issues}
    assert found == {
        ("agents.defaults.model.fallbacks.0", 5),
        ("agents.defaults.timeoutSeconds", 6),
        ("models.providers.lmstudio.api", 14),
        ("models.providers.lmstudio.models.1.maxTokens", 17),
        ("session.maxTurn", 22),
    }
    lines = [i.line or 0 for i in caught.value.issues]
    assert lines == sorted(lines)
    assert str(DATA / "many-issues.json5") in str(caught.value)


def test_out_of_range_values_are_rejected() -> None:
    """Numeric limits hold: idleDays > 0, 0 < threshold <= 1, positive timeouts."""
    text = """{
      session: {idleDays: 0},
      agents: {defaults: {compaction: {threshold: 1.5}, timeoutSeconds: 0}},
    }"""
    paths = {i.path for i in issues_of(text)}
    assert paths == {
        "session.idleDays",
        "agents.defaults.compaction.threshold",
        "agents.defaults.timeoutSeconds",
    }


def test_model_of_wrong_shape_is_explained() -> None:
    """`model` must be a ref string or {primary, fallbacks}."""
    [issue] = issues_of("{agents: {defaults: {model: 5}}}")
    assert issue.path == "agents.defaults.model"
    assert "provider/model" in issue.message


def test_source_is_not_a_config_key() -> None:
    """`source` is set by the loader, so writing it in the file is an unknown key."""
    [issue] = issues_of('{source: "elsewhere"}')
    assert issue.path == "source"
    assert "unknown key" in issue.message


def test_secrets_never_appear_in_messages() -> None:
    """Issues about a provider with a bad field do not repeat its apiKey value."""
    text = '{models: {providers: {x: {apiKey: "sk-secret-123", api: "nope", timeoutSeconds: -1}}}}'
    assert "sk-secret-123" not in str(ConfigError(issues_of(text)))


# --- catalog, merge and replace ------------------------------------------------------------------


def test_catalog_providers_in_merge_mode() -> None:
    """Merge mode adds anthropic, openai and openrouter with keys from env (None if unset)."""
    config = parse_config("{}", source="x", env={"OPENAI_API_KEY": "sk-oa"})
    providers = config.providers()
    anthropic = providers["anthropic"]
    assert anthropic.base_url == "https://api.anthropic.com/v1/"
    assert anthropic.api == "openai-completions"
    assert anthropic.api_key is None
    assert providers["openai"].api == "openai-responses"
    assert providers["openai"].api_key == "sk-oa"
    opus = config.model_spec("anthropic", "claude-opus-4-5")
    assert opus is not None
    assert (opus.name, opus.context_window) == ("Claude Opus 4.5", 200000)
    assert config.model_spec("openrouter", "minimax/minimax-m2.1") is not None


def test_override_merges_field_by_field() -> None:
    """A configured catalog provider keeps the catalog's other fields; models merge by id."""
    text = """{models: {providers: {anthropic: {
      apiKey: "${MY_KEY}",
      models: [{id: "claude-opus-4-5", maxTokens: 32000}, {id: "claude-haiku-4-5"}],
    }}}}"""
    config = parse_config(text, source="x", env={"MY_KEY": "k", "ANTHROPIC_API_KEY": "other"})
    anthropic = config.providers()["anthropic"]
    assert anthropic.api_key == "k"
    assert anthropic.base_url == "https://api.anthropic.com/v1/"
    assert anthropic.api == "openai-completions"
    assert {m.id for m in anthropic.models} == {
        "claude-opus-4-5",
        "claude-sonnet-4-5",
        "claude-haiku-4-5",
    }
    opus = config.model_spec("anthropic", "claude-opus-4-5")
    assert opus is not None
    assert (opus.max_tokens, opus.name) == (32000, None)


def test_new_provider_needs_base_url_and_api() -> None:
    """A provider not in the catalog must set baseUrl and api."""
    issues = issues_of('{models: {providers: {\n  foo: {apiKey: "x"},\n}}}')
    assert {i.message for i in issues} == {
        "models.providers.foo.baseUrl is required",
        "models.providers.foo.api is required",
    }
    assert {i.line for i in issues} == {2}


def test_replace_mode_drops_catalog() -> None:
    """Replace mode keeps only configured providers, so refs to the catalog fail."""
    text = SEED_LOCAL.read_text().replace('mode: "merge"', 'mode: "replace"')
    [issue] = issues_of(text)
    assert issue.path == "agents.defaults.models.anthropic/claude-opus-4-5"
    assert "unknown provider 'anthropic'" in issue.message
    local_only = text.replace('"anthropic/claude-opus-4-5": { alias: "Opus" },', "")
    config = parse_config(local_only, source="x", env={"ANTHROPIC_API_KEY": "k"})
    assert set(config.providers()) == {"lmstudio"}


# --- refs and aliases ----------------------------------------------------------------------------


def test_ref_splits_at_first_slash() -> None:
    """`openrouter/minimax/minimax-m2.1` names provider openrouter, model minimax/minimax-m2.1."""
    text = '{agents: {defaults: {model: "openrouter/minimax/minimax-m2.1"}}}'
    config = parse_config(text, source="x", env={})
    assert config.agents.defaults.model.primary == "openrouter/minimax/minimax-m2.1"
    assert config.model_spec("openrouter", "minimax/minimax-m2.1") is not None


def test_unknown_provider_in_ref_suggests() -> None:
    """A ref to a provider that does not exist is an issue with a did-you-mean."""
    text = '{\n  agents: {defaults: {\n    compaction: {model: "antrhopic/x"},\n  }},\n}'
    [issue] = issues_of(text)
    assert issue.path == "agents.defaults.compaction.model"
    assert "did you mean 'anthropic'?" in issue.message
    assert issue.line == 3


def test_media_keys_load_and_are_checked() -> None:
    """agents.defaults.media takes maxBytes (10 MiB by default) and a transcriptionModel ref;
    a misspelt key or an unknown provider in the ref is located like any other."""
    assert parse_config("{}", source="x", env={}).agents.defaults.media.max_bytes == 10 * 2**20
    good = '{agents: {defaults: {media: {maxBytes: 5000, transcriptionModel: "openai/whisper-1"}}}}'
    media = parse_config(good, source="x", env={}).agents.defaults.media
    assert (media.max_bytes, media.transcription_model) == (5000, "openai/whisper-1")
    text = (
        '{\n  agents: {defaults: {media: {\n    maxByte: 5,\n    transcriptionModel: "opnai/w",'
        "\n  }}},\n}"
    )
    issues = {(i.path, i.line): i.message for i in issues_of(text)}
    assert "did you mean 'maxBytes'?" in issues["agents.defaults.media.maxByte", 3]
    assert "did you mean 'openai'?" in issues["agents.defaults.media.transcriptionModel", 4]


def test_a_transcription_model_without_its_key_is_warned_about() -> None:
    """A transcriptionModel on a hosted provider whose key is unset loads with a warning that
    names the variable; with the key set there is none."""
    text = '{agents: {defaults: {media: {transcriptionModel: "openai/whisper-1"}}}}'
    [warning] = parse_config(text, source="x", env={}).warnings()
    assert "OPENAI_API_KEY is not set" in warning
    assert parse_config(text, source="x", env={"OPENAI_API_KEY": "sk-x"}).warnings() == []


def test_unlisted_model_of_known_provider_is_allowed() -> None:
    """A model id a provider does not list is fine; model_spec returns None for it."""
    config = parse_config('{agents: {defaults: {model: "openai/gpt-6"}}}', source="x", env={})
    assert config.model_spec("openai", "gpt-6") is None


def test_ref_without_slash_is_rejected() -> None:
    """A ref must be provider/model."""
    [issue] = issues_of('{agents: {defaults: {model: {primary: "sonnet"}}}}')
    assert issue.path == "agents.defaults.model.primary"
    assert "provider/model" in issue.message


def test_duplicate_alias_case_insensitive() -> None:
    """Two refs sharing an alias (ignoring case) is an issue at the second alias."""
    text = """{agents: {defaults: {models: {
      "anthropic/claude-opus-4-5": {alias: "Big"},
      "openai/gpt-5.1": {alias: "big"},
    }}}}"""
    [issue] = issues_of(text)
    assert issue.path == 'agents.defaults.models."openai/gpt-5.1".alias'
    assert issue.line == 3
    assert "'big'" in issue.message
    assert "anthropic/claude-opus-4-5" in issue.message


# --- the key locator -----------------------------------------------------------------------------


def test_locator_skips_comments_and_strings() -> None:
    """Braces and quotes in comments or strings do not confuse key lines; both quote styles work."""
    text = """{
  // { "fake": 1 }
  /* multi
     line { comment } */
  "a": "string with { brace and \\" quote",
  'b': { c: 'it\\'s }', "d-e": [1, {f: 2}, [3]] },
  g: "x",
}"""
    lines, duplicates = key_lines(text)
    assert lines[("a",)] == 5
    assert lines[("b",)] == 6
    assert lines[("b", "c")] == 6
    assert lines[("b", "d-e", 1, "f")] == 6
    assert lines[("b", "d-e", 2, 0)] == 6
    assert lines[("g",)] == 7
    assert ("fake",) not in lines
    assert duplicates == []


def test_locator_indexes_array_elements() -> None:
    """Array elements are located by index, across lines and trailing commas."""
    text = "{\n  xs: [\n    {id: 1},\n    {\n      id: 2,\n      y: 3,\n    },\n  ],\n  z: 0\n}"
    lines, _ = key_lines(text)
    assert lines[("xs", 0)] == 3
    assert lines[("xs", 1)] == 4
    assert lines[("xs", 1, "y")] == 6
    assert lines[("z",)] == 9
