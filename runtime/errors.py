"""The llmctx error hierarchy.

Every user-facing failure raises an `LlmctxError` subclass whose message names the
thing at fault and how to fix it. The CLI turns any of them into one line on stderr
and exit code 2, with no traceback.

This module imports nothing from llmctx, so every package (including `templates`,
which must not depend on the rest of the runtime) can raise these errors.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = [
    "BudgetError",
    "CheckpointStoreError",
    "ConfigError",
    "EmbeddingError",
    "LlmctxError",
    "MemoryStoreError",
    "PlanValidationError",
    "ReferencePathError",
    "ScheduleResumeError",
    "SummarizerError",
    "SwitchError",
    "TagError",
    "TemplateError",
    "TemplateNotFoundError",
    "ThreadNotFoundError",
    "TokenizerError",
    "TranscriptError",
    "UnsupportedSaverError",
    "VersionError",
    "VersionNotFoundError",
    "WorkspaceError",
    "WorkspacePathError",
]


class LlmctxError(Exception):
    """Base class of every error llmctx raises on purpose."""


class ConfigError(LlmctxError):
    """A setting has an invalid value; the message names the field and the fix."""


class BudgetError(LlmctxError):
    """The pinned context alone does not fit the token budget."""


class TokenizerError(LlmctxError):
    """No tokenizer could be loaded for a model, or its input cannot be counted."""


class WorkspaceError(LlmctxError):
    """The `.llm/` workspace cannot be created, read or cleaned."""


class WorkspacePathError(WorkspaceError):
    """A path would resolve outside the workspace (path traversal)."""


class TemplateError(LlmctxError):
    """A template file is invalid; the message points to file, line and field."""


class TemplateNotFoundError(TemplateError):
    """No template has the requested name; the message lists the available ones."""


class TranscriptError(LlmctxError):
    """A transcript cannot be read; the message names file:line and the field."""


class ThreadNotFoundError(LlmctxError):
    """A thread has no checkpoints in the workspace or saver that was asked."""


class CheckpointStoreError(LlmctxError):
    """The checkpoint database is corrupt, foreign or from a newer llmctx; never reset."""


class VersionError(LlmctxError):
    """A version operation cannot be done (bad reference, nothing to roll back to...)."""


class VersionNotFoundError(VersionError):
    """No version of the thread matches the id, prefix or tag (or it is ambiguous)."""


class TagError(LlmctxError):
    """A tag name is invalid, reserved or already used in the thread."""


class UnsupportedSaverError(LlmctxError):
    """The checkpoint saver cannot do what was asked (e.g. delete single checkpoints)."""


class EmbeddingError(LlmctxError):
    """An embedder failed: it raised, or returned the wrong number of vectors, vectors
    of the wrong size, or non-finite values. The message names the embedder and the fix;
    nothing was written when an embedding for a write failed."""


class MemoryStoreError(LlmctxError, ValueError):
    """The memory store cannot do what was asked: a bad value, filter or argument, or
    Chroma failed. A `ValueError` too, like the errors of LangGraph's own stores."""


class PlanValidationError(LlmctxError, ValueError):
    """The tool calls do not form a valid plan (unknown tool, missing reference, cycle,
    self-reference or duplicate id). `problems` maps each affected call id to its reason."""

    def __init__(self, problems: Mapping[str, str]) -> None:
        self.problems = dict(problems)
        lines = "; ".join(f"call {cid!r}: {why}" for cid, why in self.problems.items())
        super().__init__(f"invalid tool-call plan, nothing was run: {lines}")


class ReferencePathError(LlmctxError, LookupError):
    """A reference's path does not exist in the referenced result; the message names the
    call, the path and the keys that do exist."""


class ScheduleResumeError(LlmctxError):
    """A resumed plan does not match the saved one (its tool calls changed); the message
    names the call. Saved results are never handed to a different call."""


class SummarizerError(LlmctxError):
    """The summarizer cannot run: the chat model failed, or its arguments are invalid."""


class SwitchError(LlmctxError):
    """A context switch cannot be done: an unknown template, strategy or field in a switch
    request, or an invalid switch policy. Nothing was stored for the turn; the message
    names the request and the fix."""
