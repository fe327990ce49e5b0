"""The llmctx engine: settings, exact token counting, the `.llm/` workspace, checkpoints
and versions, transcripts, and the front doors (the CLI).

This package never imports `llmctx.templates`, `llmctx.nodes` or `llmctx.graphs` at
import time (only the CLI does, lazily), so `templates` can raise our errors without
an import cycle.
"""

from llmctx.runtime.errors import (
    BudgetError,
    CheckpointStoreError,
    ConfigError,
    LlmctxError,
    TemplateError,
    TemplateNotFoundError,
    ThreadNotFoundError,
    TokenizerError,
    TranscriptError,
    VersionNotFoundError,
    WorkspaceError,
    WorkspacePathError,
)
from llmctx.runtime.savers import open_saver
from llmctx.runtime.settings import (
    EmbeddingSettings,
    LifecycleSettings,
    LLMSettings,
    MonitoringSettings,
    Settings,
)
from llmctx.runtime.tokens import (
    REPLY_PRIMING,
    TOKENS_PER_MESSAGE,
    CacheInfo,
    TokenCounter,
    approximate_count,
)
from llmctx.runtime.transcripts import (
    QAItem,
    Transcript,
    Turn,
    demo_transcript_path,
    load_transcript,
    transcript_info,
)
from llmctx.runtime.versions import Version, history
from llmctx.runtime.workspace import FOLDERS, GcReport, HealthReport, Workspace

__all__ = [
    "FOLDERS",
    "REPLY_PRIMING",
    "TOKENS_PER_MESSAGE",
    "BudgetError",
    "CacheInfo",
    "CheckpointStoreError",
    "ConfigError",
    "EmbeddingSettings",
    "GcReport",
    "HealthReport",
    "LLMSettings",
    "LifecycleSettings",
    "LlmctxError",
    "MonitoringSettings",
    "QAItem",
    "Settings",
    "TemplateError",
    "TemplateNotFoundError",
    "ThreadNotFoundError",
    "TokenCounter",
    "TokenizerError",
    "Transcript",
    "TranscriptError",
    "Turn",
    "Version",
    "VersionNotFoundError",
    "Workspace",
    "WorkspaceError",
    "WorkspacePathError",
    "approximate_count",
    "demo_transcript_path",
    "history",
    "load_transcript",
    "open_saver",
    "transcript_info",
]
