"""The llmctx engine: settings, exact token counting, the `.llm/` workspace, checkpoints
and versions, transcripts, and the front doors (the CLI).

This package never imports `llmctx.templates`, `llmctx.nodes` or `llmctx.graphs` at
import time (only the CLI does, lazily), so `templates` can raise our errors without
an import cycle.
"""

from llmctx.runtime.checkpointer import LlmctxSaver, VersionRow
from llmctx.runtime.embeddings import Embedder, make_embedder
from llmctx.runtime.errors import (
    BudgetError,
    CheckpointStoreError,
    ConfigError,
    LlmctxError,
    MemoryStoreError,
    SummarizerError,
    TagError,
    TemplateError,
    TemplateNotFoundError,
    ThreadNotFoundError,
    TokenizerError,
    TranscriptError,
    UnsupportedSaverError,
    VersionError,
    VersionNotFoundError,
    WorkspaceError,
    WorkspacePathError,
)
from llmctx.runtime.memory import ChromaStore
from llmctx.runtime.models import chat_model
from llmctx.runtime.retrieval import Hit, HybridRetriever
from llmctx.runtime.savers import open_async_saver, open_saver
from llmctx.runtime.settings import (
    EmbeddingSettings,
    LifecycleSettings,
    LLMSettings,
    MemorySettings,
    MonitoringSettings,
    Settings,
)
from llmctx.runtime.summarizer import (
    ChatModelSummarizer,
    ExtractiveSummarizer,
    Summarizer,
    SummaryResult,
    make_summarizer,
)
from llmctx.runtime.tags import TagStore, tag_store_for
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
from llmctx.runtime.versions import (
    PruneReport,
    Version,
    VersionDiff,
    VersionState,
    branch,
    diff,
    diff_renderable,
    expire_threads,
    get,
    history,
    prune,
    resolve,
    rollback,
    tag,
    untag,
)
from llmctx.runtime.workspace import FOLDERS, GcReport, HealthReport, Workspace

__all__ = [
    "FOLDERS",
    "REPLY_PRIMING",
    "TOKENS_PER_MESSAGE",
    "BudgetError",
    "CacheInfo",
    "ChatModelSummarizer",
    "CheckpointStoreError",
    "ChromaStore",
    "ConfigError",
    "Embedder",
    "EmbeddingSettings",
    "ExtractiveSummarizer",
    "GcReport",
    "HealthReport",
    "Hit",
    "HybridRetriever",
    "LLMSettings",
    "LifecycleSettings",
    "LlmctxError",
    "LlmctxSaver",
    "MemorySettings",
    "MemoryStoreError",
    "MonitoringSettings",
    "PruneReport",
    "QAItem",
    "Settings",
    "Summarizer",
    "SummarizerError",
    "SummaryResult",
    "TagError",
    "TagStore",
    "TemplateError",
    "TemplateNotFoundError",
    "ThreadNotFoundError",
    "TokenCounter",
    "TokenizerError",
    "Transcript",
    "TranscriptError",
    "Turn",
    "UnsupportedSaverError",
    "Version",
    "VersionDiff",
    "VersionError",
    "VersionNotFoundError",
    "VersionRow",
    "VersionState",
    "Workspace",
    "WorkspaceError",
    "WorkspacePathError",
    "approximate_count",
    "branch",
    "chat_model",
    "demo_transcript_path",
    "diff",
    "diff_renderable",
    "expire_threads",
    "get",
    "history",
    "load_transcript",
    "make_embedder",
    "make_summarizer",
    "open_async_saver",
    "open_saver",
    "prune",
    "resolve",
    "rollback",
    "tag",
    "tag_store_for",
    "transcript_info",
    "untag",
]
