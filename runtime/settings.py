"""Settings: configuration declared once, validated at the edge, passed inward typed.

Values come from, highest priority first:

1. keyword arguments to `Settings.load(...)` (the CLI's flags);
2. environment variables with the `LLMCTX_` prefix (nested fields use `__`,
   e.g. `LLMCTX_LLM__BASE_URL`);
3. a `.env` file in the current directory;
4. `<workspace>/config/settings.toml`;
5. the defaults below.

Example:
    >>> s = Settings.load(context_window=32_000)
    >>> s.budget_tokens
    27904

Secrets are `SecretStr`: they print as `**********` and are never written to disk.
"""

from __future__ import annotations

import os
import tomllib
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    EnvSettingsSource,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from llmctx.runtime.errors import ConfigError

__all__ = [
    "EmbeddingSettings",
    "LLMSettings",
    "LifecycleSettings",
    "MemorySettings",
    "MonitoringSettings",
    "Settings",
]

ENV_PREFIX = "LLMCTX_"
SETTINGS_TOML = Path("config") / "settings.toml"

# The TOML file lives inside the workspace, whose path is itself a setting; `load`
# resolves the workspace first and hands the file to the source through this var.
_toml_path: ContextVar[Path | None] = ContextVar("_llmctx_toml_path", default=None)


class _Section(BaseModel):
    """A nested settings table; unknown keys are errors, so a typo never goes unnoticed."""

    model_config = ConfigDict(extra="forbid")


class _DotEnv(DotEnvSettingsSource):
    """`.env` reader that only looks at `LLMCTX_*` keys.

    A `.env` file is usually shared with other tools (`OPENAI_API_KEY`, ...); with
    `extra="forbid"` pydantic-settings would reject every foreign key in it. Unknown
    `LLMCTX_*` keys are kept, so a typo in one of ours is still reported.
    """

    def __call__(self) -> dict[str, Any]:
        data = super().__call__()
        fields = self.settings_cls.model_fields
        prefix = ENV_PREFIX.lower()
        return {k: v for k, v in data.items() if k in fields or k.lower().startswith(prefix)}


# Single-underscore spellings of the chat model's endpoint and key, as users (and the
# docs of other OpenAI-compatible tools) write them; the canonical names
# (`LLMCTX_LLM__BASE_URL`) win when both are set.
_FLAT_LLM_ENV = {"LLMCTX_LLM_BASE_URL": "base_url", "LLMCTX_LLM_API_KEY": "api_key"}


class _FlatLLMEnv(PydanticBaseSettingsSource):
    """Reads `LLMCTX_LLM_BASE_URL` and `LLMCTX_LLM_API_KEY` into `llm`."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ builds the whole dict

    def __call__(self) -> dict[str, Any]:
        env = {k.upper(): v for k, v in os.environ.items()}
        llm = {field: env[name] for name, field in _FLAT_LLM_ENV.items() if env.get(name)}
        return {"llm": llm} if llm else {}


class LLMSettings(_Section):
    """The chat model used for summaries and `llmctx chat`.

    With provider `auto`, an OpenAI-compatible model is used when an API key or a
    base URL is configured; otherwise there is no LLM and summarization is extractive.
    """

    provider: Literal["auto", "openai", "none"] = "auto"
    base_url: str | None = None
    api_key: SecretStr | None = None
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    timeout_s: float = Field(60.0, gt=0)

    @property
    def configured(self) -> bool:
        """Whether a real chat model is available."""
        if self.provider == "none":
            return False
        if self.provider == "openai":
            return True
        return bool(self.base_url or (self.api_key and self.api_key.get_secret_value()))


class EmbeddingSettings(_Section):
    """The embedder behind dense retrieval. Lexical retrieval always works without one."""

    provider: Literal["none", "openai", "sentence-transformers"] = "none"
    model: str = "all-MiniLM-L6-v2"
    base_url: str | None = None
    api_key: SecretStr | None = None


class MemorySettings(_Section):
    """Long-term memory: the embedded Chroma store under `.llm/memory/`, or a server.

    `url` set (e.g. `http://chroma:8000`) uses a Chroma server through `HttpClient`,
    so several machines share one memory; unset, a local `PersistentClient`.
    """

    url: str | None = Field(None, description="Chroma server URL; unset: embedded")
    collection: str = Field("llmctx-memory", min_length=3, max_length=63)


class MonitoringSettings(_Section):
    """Latency and token metrics with confidence intervals and alerts."""

    enabled: bool = True
    window: int = Field(500, ge=10, description="samples kept per metric")
    confidence: float = Field(0.95, gt=0.5, lt=1.0)
    latency_alert_ms: float = Field(250.0, gt=0)
    budget_alert_fraction: float = Field(0.95, gt=0, le=1.0)


class LifecycleSettings(_Section):
    """Workspace retention rules applied by `llmctx gc`."""

    max_age_days: float = Field(30.0, gt=0, description="files untouched this long may go")
    min_access_count: int = Field(
        1, ge=0, description="old files read at least this often are kept"
    )
    cache_ttl_hours: float = Field(24.0, gt=0, description="cache/ entries expire after this")
    protected: list[str] = Field(
        default_factory=lambda: ["versions", "memory", "templates", "config"],
        description="folders gc never deletes from by age",
    )


class Settings(BaseSettings):
    """Every llmctx setting, typed and validated. Build it with `Settings.load()`."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="forbid",
        validate_default=True,
    )

    workspace: Path = Field(Path(".llm"), description="the .llm/ workspace folder")
    model: str = Field("gpt-4o-mini", description="model name; picks the tokenizer")
    tokenizer: str | None = Field(
        None, description="tiktoken encoding to use instead of the model's own"
    )
    context_window: int = Field(128_000, gt=0, description="the model's context window")
    output_reserve: int = Field(4_096, ge=0, description="tokens kept free for the reply")
    default_template: str = Field("general", min_length=1)
    llm: LLMSettings = Field(default_factory=LLMSettings)
    embeddings: EmbeddingSettings = Field(default_factory=EmbeddingSettings)
    memory: MemorySettings = Field(default_factory=MemorySettings)
    monitoring: MonitoringSettings = Field(default_factory=MonitoringSettings)
    lifecycle: LifecycleSettings = Field(default_factory=LifecycleSettings)

    @field_validator("workspace")
    @classmethod
    def _expand_workspace(cls, value: Path) -> Path:
        return value.expanduser()

    @model_validator(mode="after")
    def _reserve_fits(self) -> Settings:
        if self.output_reserve >= self.context_window:
            # `fields` lets `_explain` say where each of the two values can be fixed.
            raise PydanticCustomError(
                "reserve_too_large",
                "output_reserve ({reserve}) must be smaller than context_window ({window})",
                {
                    "reserve": self.output_reserve,
                    "window": self.context_window,
                    "fields": ("context_window", "output_reserve"),
                },
            )
        return self

    @property
    def budget_tokens(self) -> int:
        """The tokens the assembled window may use: context window minus output reserve."""
        return self.context_window - self.output_reserve

    @property
    def settings_file(self) -> Path:
        """Where this workspace keeps its TOML settings."""
        return self.workspace / SETTINGS_TOML

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml = TomlConfigSettingsSource(settings_cls, toml_file=_toml_path.get())
        flat = _FlatLLMEnv(settings_cls)
        return (init_settings, env_settings, flat, _DotEnv(settings_cls), toml)

    @classmethod
    def load(cls, **overrides: Any) -> Settings:
        """Build settings from every source, raising `ConfigError` on a bad value.

        `overrides` take precedence over everything else; `None` values are ignored
        so that unset CLI flags fall through to the other sources.
        """
        overrides = {k: v for k, v in overrides.items() if v is not None}
        toml_file = _resolve_workspace(overrides) / SETTINGS_TOML
        has_toml = _check_toml(toml_file)
        token = _toml_path.set(toml_file if has_toml else None)
        try:
            return cls(**overrides)
        except ValidationError as exc:
            raise ConfigError(_explain(exc, toml_file, _origins(overrides, toml_file))) from None
        except SettingsError as exc:  # e.g. LLMCTX_LLM='{bad json'
            raise ConfigError(
                f"cannot read settings: {exc}; a whole table given as one variable "
                "(e.g. LLMCTX_LLM) must be a JSON object, or set fields one by one "
                "(LLMCTX_LLM__BASE_URL)"
            ) from None
        except (OSError, ValueError) as exc:  # e.g. an unreadable .env
            raise ConfigError(f"cannot read settings: {exc}") from None
        finally:
            _toml_path.reset(token)

    @classmethod
    def sources(cls, **overrides: Any) -> dict[str, str]:
        """Map each dotted field name to the source its effective value came from.

        Sources are `argument`, `env`, `.env`, `settings.toml` and `default`.
        """
        overrides = {k: v for k, v in overrides.items() if v is not None}
        effective = cls.load(**overrides)  # validates first: bad input is a ConfigError
        found = _origins(overrides, _resolve_workspace(overrides) / SETTINGS_TOML)
        return {key: _origin_of(key, found) for key in _flatten_keys(effective.model_dump())}

    def redacted(self) -> dict[str, Any]:
        """A JSON-safe dump with every secret masked, for display and logs."""
        return _mask(self.model_dump(mode="json"), self)


def _resolve_workspace(overrides: dict[str, Any]) -> Path:
    if "workspace" in overrides:
        return Path(overrides["workspace"]).expanduser()
    # Env names are matched case-insensitively, as pydantic-settings does.
    wanted = f"{ENV_PREFIX}WORKSPACE"
    env = next((v for k, v in os.environ.items() if k.upper() == wanted and v), None)
    if env:
        return Path(env).expanduser()
    dotenv = _DotEnv(Settings)().get("workspace")
    return Path(dotenv).expanduser() if dotenv else Path(".llm")


def _check_toml(toml_file: Path) -> bool:
    """Whether the settings file exists; a ConfigError naming it if it cannot be parsed."""
    if not toml_file.is_file():
        return False
    try:
        with toml_file.open("rb") as handle:
            tomllib.load(handle)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{toml_file}: not valid TOML ({exc}); fix or remove the file") from None
    except OSError as exc:
        raise ConfigError(f"{toml_file}: cannot read the settings file ({exc})") from None
    return True


def _origins(overrides: dict[str, Any], toml_file: Path) -> dict[str, str]:
    """Map each dotted key any source sets to the highest-priority source setting it."""
    layers: list[tuple[str, dict[str, Any]]] = [
        ("argument", InitSettingsSource(Settings, init_kwargs=overrides)()),
        ("env", EnvSettingsSource(Settings)()),
        ("env", _FlatLLMEnv(Settings)()),
        (".env", _DotEnv(Settings)()),
    ]
    if toml_file.is_file():
        layers.append(("settings.toml", TomlConfigSettingsSource(Settings, toml_file)()))
    found: dict[str, str] = {}
    for name, data in layers:
        for key in _flatten_keys(data):
            found.setdefault(key, name)
    return found


def _origin_of(dotted: str, found: dict[str, str]) -> str:
    """The source of a leaf: its own entry, else its nearest parent's (a whole table)."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        origin = found.get(".".join(parts[:i]))
        if origin is not None:
            return origin
    return "default"


def _flatten_keys(data: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted names of the leaves of a nested dict."""
    keys: list[str] = []
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            keys.extend(_flatten_keys(value, f"{dotted}."))  # an empty table sets nothing
        else:
            keys.append(dotted)
    return keys


def _mask(dumped: dict[str, Any], model: BaseModel) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in dumped.items():
        attr = getattr(model, key, None)
        if isinstance(attr, SecretStr):
            out[key] = "**********" if attr.get_secret_value() else ""
        elif isinstance(attr, BaseModel) and isinstance(value, dict):
            out[key] = _mask(value, attr)
        else:
            out[key] = value
    return out


def _explain(exc: ValidationError, toml_file: Path, found: dict[str, str]) -> str:
    """Turn pydantic's report into one clause per error: the field, where it was set
    and what to fix, e.g. `invalid setting 'context_window' (got 'abc'): Input should
    be a valid integer; fix the environment variable LLMCTX_CONTEXT_WINDOW`."""
    lines = []
    for err in exc.errors():
        # The field path, without list indexes (`lifecycle.protected.0`).
        loc = [str(p) for p in err.get("loc", ()) if isinstance(p, str)]
        msg = err.get("msg", "invalid value")
        fields = (err.get("ctx") or {}).get("fields")
        if not loc and fields:  # a rule across fields, e.g. output_reserve < context_window
            where = ", ".join(f"{f} ({_where(f, _origin_of(f, found), toml_file)})" for f in fields)
            lines.append(f"invalid settings: {msg}; fix one of: {where}")
            continue
        dotted = ".".join(loc) or "settings"
        origin = _origin_of(dotted, found)
        if loc and loc[0].lower().startswith(ENV_PREFIX.lower()):  # unknown LLMCTX_* in .env
            dotted = loc[0][len(ENV_PREFIX) :].lower()
        where = _where(dotted, origin, toml_file)
        if err.get("type") == "extra_forbidden":
            where = _where(dotted, origin, toml_file, preposition="from")
            fix = f"remove {where} (known fields: {_known_fields(loc[:-1])})"
        else:
            fix = f"set {where} to a valid value"
        given = err.get("input")
        given_txt = "" if isinstance(given, dict) else f" (got {given!r})"
        lines.append(f"invalid setting '{dotted}'{given_txt}: {msg}; {fix}")
    return "; ".join(lines)


def _where(dotted: str, origin: str, toml_file: Path, preposition: str = "in") -> str:
    """Where the user sets `dotted`, given the source its current value came from."""
    env = ENV_PREFIX + "__".join(p.upper() for p in dotted.split("."))
    if origin == "env":
        return f"the environment variable {env}"
    if origin == ".env":
        return f"{env} {preposition} .env"
    if origin == "settings.toml":
        return f"'{dotted}' {preposition} {toml_file}"
    if origin == "argument":
        return f"the value passed for '{dotted}'"
    return f"{env} or '{dotted}' in {toml_file}"


def _known_fields(section: list[str]) -> str:
    """The field names of the (nested) settings table at `section`."""
    model: type[BaseModel] = Settings
    for part in section:
        field = model.model_fields.get(part)
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            break
        model = annotation
    return ", ".join(model.model_fields)
