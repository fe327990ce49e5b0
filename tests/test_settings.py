"""Settings: source precedence, nested env, the workspace's TOML, errors and secrets.

Every test runs in an empty `tmp_path` without `LLMCTX_*` variables (conftest), and
writes the real `.env` and `settings.toml` files it needs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmctx.runtime.errors import ConfigError, LlmctxError
from llmctx.runtime.settings import Settings

SECRET = "sk-test-5f3c9a1e-do-not-print"


def _toml(text: str, workspace: Path | str = ".llm") -> Path:
    path = Path(workspace) / "config" / "settings.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _dotenv(*lines: str) -> None:
    Path(".env").write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")


def _leaves(data: dict[str, object], prefix: str = "") -> list[str]:
    keys: list[str] = []
    for key, value in data.items():
        if isinstance(value, dict):
            keys.extend(_leaves(value, f"{prefix}{key}."))
        else:
            keys.append(f"{prefix}{key}")
    return keys


def test_defaults_when_nothing_is_configured() -> None:
    s = Settings.load()
    assert s.workspace == Path(".llm")
    assert (s.model, s.tokenizer, s.default_template) == ("gpt-4o-mini", None, "general")
    assert s.budget_tokens == 128_000 - 4_096
    assert s.settings_file == Path(".llm/config/settings.toml")
    sources = Settings.sources()
    assert set(sources) == set(_leaves(s.model_dump()))
    assert set(sources.values()) == {"default"}


def test_precedence_argument_env_dotenv_toml_default(monkeypatch: pytest.MonkeyPatch) -> None:
    # Each layer sets `model`; lower layers also set a field no higher layer touches,
    # which must keep coming from that lower layer.
    _toml('model = "from-toml"\ncontext_window = 64000\n')
    assert Settings.load().model == "from-toml"
    assert Settings.sources()["model"] == "settings.toml"

    _dotenv("LLMCTX_MODEL=from-dotenv", "LLMCTX_DEFAULT_TEMPLATE=business")
    assert Settings.load().model == "from-dotenv"

    monkeypatch.setenv("LLMCTX_MODEL", "from-env")
    assert Settings.load().model == "from-env"

    s = Settings.load(model="from-argument", tokenizer=None)  # None means "not given"
    assert (s.model, s.context_window, s.default_template) == (
        "from-argument",
        64_000,
        "business",
    )
    assert s.output_reserve == 4_096
    sources = Settings.sources(model="from-argument")
    assert sources["model"] == "argument"
    assert sources["context_window"] == "settings.toml"
    assert sources["default_template"] == ".env"
    assert sources["output_reserve"] == "default"
    assert Settings.sources()["model"] == "env"


def test_nested_env_with_double_underscore_merges_leaf_by_leaf(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _toml('[llm]\nprovider = "openai"\nbase_url = "http://toml:1/v1"\ntimeout_s = 5\n')
    _dotenv(f"LLMCTX_LLM__API_KEY={SECRET}")
    monkeypatch.setenv("LLMCTX_LLM__BASE_URL", "http://env:2/v1")
    monkeypatch.setenv("LLMCTX_LIFECYCLE__MAX_AGE_DAYS", "7")
    s = Settings.load()
    assert s.llm.base_url == "http://env:2/v1"
    assert s.llm.provider == "openai" and s.llm.timeout_s == 5.0
    assert s.llm.api_key is not None and s.llm.api_key.get_secret_value() == SECRET
    assert s.lifecycle.max_age_days == 7.0
    sources = Settings.sources()
    assert sources["llm.base_url"] == "env"
    assert sources["llm.provider"] == "settings.toml"
    assert sources["llm.timeout_s"] == "settings.toml"
    assert sources["llm.api_key"] == ".env"
    assert sources["llm.temperature"] == "default"
    assert sources["lifecycle.max_age_days"] == "env"
    assert sources["lifecycle.cache_ttl_hours"] == "default"


@pytest.mark.parametrize("how", ["argument", "env", ".env"])
def test_toml_is_read_from_the_configured_workspace(
    how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _toml('model = "in-default-workspace"\n')  # ./.llm: must be ignored
    _toml('model = "in-custom-workspace"\n', workspace="custom")
    overrides = {}
    if how == "argument":
        overrides = {"workspace": Path("custom")}
    elif how == "env":
        monkeypatch.setenv("LLMCTX_WORKSPACE", "custom")
    else:
        _dotenv("LLMCTX_WORKSPACE=custom")
    s = Settings.load(**overrides)
    assert s.workspace == Path("custom")
    assert s.model == "in-custom-workspace"
    assert Settings.sources(**overrides)["model"] == "settings.toml"
    assert Settings.sources(**overrides)["workspace"] == how


def test_workspace_expands_user(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    _toml('model = "from-home"\n', workspace=tmp_path / "home" / "ws")
    s = Settings.load(workspace="~/ws")
    assert s.workspace == tmp_path / "home" / "ws"
    assert s.model == "from-home"


def test_an_empty_toml_table_sets_nothing() -> None:
    _toml("[llm]\n")
    assert Settings.sources()["llm.base_url"] == "default"


# -- errors ---------------------------------------------------------------------------


def _config_error(**overrides: object) -> str:
    with pytest.raises(ConfigError) as info:
        Settings.load(**overrides)
    assert isinstance(info.value, LlmctxError)
    return str(info.value)


def test_int_parse_error_from_env_names_field_and_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LLMCTX_CONTEXT_WINDOW", "12k")
    message = _config_error()
    assert "'context_window'" in message and "'12k'" in message
    assert "the environment variable LLMCTX_CONTEXT_WINDOW" in message
    assert "\n" not in message


def test_int_parse_error_from_toml_names_the_file() -> None:
    path = _toml('[monitoring]\nwindow = "lots"\n')
    message = _config_error()
    assert "'monitoring.window'" in message and "'lots'" in message
    assert str(path) in message


def test_nested_env_error_names_the_nested_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMCTX_LLM__PROVIDER", "anthropic")
    message = _config_error()
    assert "'llm.provider'" in message and "LLMCTX_LLM__PROVIDER" in message
    assert "'auto', 'openai' or 'none'" in message


def test_output_reserve_must_be_below_context_window(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMCTX_CONTEXT_WINDOW", "4096")
    message = _config_error()
    assert "output_reserve (4096) must be smaller than context_window (4096)" in message
    assert "the environment variable LLMCTX_CONTEXT_WINDOW" in message
    assert "LLMCTX_OUTPUT_RESERVE or 'output_reserve' in .llm/config/settings.toml" in message
    assert "settings'" not in message  # no meaningless "invalid setting 'settings'"


def test_unknown_field_in_toml_is_an_error_naming_it_and_the_file() -> None:
    path = _toml("modle = 'gpt-4o'\n")
    message = _config_error()
    assert f"remove 'modle' from {path}" in message
    assert "known fields: workspace, model," in message


def test_unknown_nested_field_in_toml_lists_that_tables_fields() -> None:
    path = _toml("[lifecycle]\nmax_age_day = 3\n")
    message = _config_error()
    assert f"'lifecycle.max_age_day' from {path}" in message
    assert "known fields: max_age_days, min_access_count, cache_ttl_hours, protected" in message


def test_malformed_toml_names_the_file_and_line() -> None:
    path = _toml('model = "gpt-4o"\ncontext_window = \n')
    message = _config_error()
    assert message.startswith(f"{path}: not valid TOML")
    assert "line 2" in message


def test_dotenv_keys_of_other_tools_are_ignored_but_our_typos_are_not() -> None:
    _dotenv("OPENAI_API_KEY=sk-other", "DATABASE_URL=postgres://x", "LLMCTX_MODEL=gpt-4")
    assert Settings.load().model == "gpt-4"
    _dotenv("LLMCTX_MODLE=gpt-4")
    assert "remove LLMCTX_MODLE from .env" in _config_error()


def test_bad_json_for_a_whole_table_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMCTX_LLM", "{not json")
    message = _config_error()
    assert "LLMCTX_LLM" in message and "JSON" in message


def test_sources_raises_config_error_too() -> None:
    _toml("context_window = [\n")
    with pytest.raises(ConfigError):
        Settings.sources()


# -- secrets and budget -----------------------------------------------------------------


def test_secrets_are_masked_everywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMCTX_LLM__API_KEY", SECRET)
    _dotenv(f"LLMCTX_EMBEDDINGS__API_KEY={SECRET}-2")
    s = Settings.load()
    assert s.llm.api_key is not None and s.llm.api_key.get_secret_value() == SECRET
    redacted = s.redacted()
    assert redacted["llm"]["api_key"] == "**********"
    assert redacted["embeddings"]["api_key"] == "**********"
    assert redacted["llm"]["base_url"] is None  # only secrets are masked
    for text in (repr(s), str(s), repr(s.llm), json.dumps(redacted), s.model_dump_json()):
        assert SECRET not in text
    assert s.llm.configured


def test_empty_secret_redacts_to_empty() -> None:
    s = Settings.load(llm={"api_key": ""})
    assert s.redacted()["llm"]["api_key"] == ""
    assert not s.llm.configured


def test_budget_tokens_is_window_minus_reserve() -> None:
    _toml("output_reserve = 1000\n")
    assert Settings.load(context_window=32_000).budget_tokens == 31_000
    assert Settings.load(context_window=32_000, output_reserve=96).budget_tokens == 31_904


@given(window=st.integers(1, 10**7), reserve=st.integers(0, 10**7))
def test_budget_is_positive_or_config_error(window: int, reserve: int) -> None:
    if reserve < window:
        s = Settings.load(context_window=window, output_reserve=reserve)
        assert s.budget_tokens == window - reserve > 0
    else:
        with pytest.raises(ConfigError, match="output_reserve"):
            Settings.load(context_window=window, output_reserve=reserve)


def test_single_underscore_llm_endpoint_and_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """`LLMCTX_LLM_BASE_URL` / `LLMCTX_LLM_API_KEY` configure the chat model too; the
    canonical nested names win when both are set, and the key stays secret."""
    monkeypatch.setenv("LLMCTX_LLM_BASE_URL", "http://127.0.0.1:8000/v1")
    monkeypatch.setenv("LLMCTX_LLM_API_KEY", "sk-flat")
    settings = Settings.load()
    assert settings.llm.base_url == "http://127.0.0.1:8000/v1"
    assert settings.llm.configured
    assert settings.redacted()["llm"]["api_key"] != "sk-flat"
    assert Settings.sources()["llm.base_url"] == "env"
    monkeypatch.setenv("LLMCTX_LLM__BASE_URL", "http://canonical/v1")
    assert Settings.load().llm.base_url == "http://canonical/v1"
