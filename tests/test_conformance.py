"""`LlmctxSaver` against the official LangGraph checkpointer conformance suite.

Every base and extended capability must be detected and pass; a failure prints the
suite's own messages.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from pathlib import Path

import pytest

conformance = pytest.importorskip("langgraph.checkpoint.conformance")

from langgraph.checkpoint.conformance import checkpointer_test, validate  # noqa: E402
from langgraph.checkpoint.conformance.capabilities import ALL_CAPABILITIES  # noqa: E402

from llmctx.runtime.checkpointer import LlmctxSaver  # noqa: E402


def test_full_conformance(tmp_path: Path) -> None:
    counter = iter(range(100))

    @checkpointer_test(name="LlmctxSaver")
    async def factory() -> AsyncGenerator[LlmctxSaver, None]:
        saver = LlmctxSaver(tmp_path / f"suite-{next(counter)}.sqlite")
        try:
            yield saver
        finally:
            saver.close()

    report = asyncio.run(validate(factory))
    report.print_report()
    results = report.to_dict()["results"]
    failures = {name: r["failures"] for name, r in results.items() if r["failures"]}
    assert not failures, failures
    missing = {c.value for c in ALL_CAPABILITIES} - {n for n, r in results.items() if r["detected"]}
    assert not missing, f"capabilities not implemented: {sorted(missing)}"
    assert report.conformance_level() == "FULL"
    assert sum(r["tests_passed"] for r in results.values()) == _suite_size()


def _suite_size() -> int:
    """How many tests the installed suite has (so a newer suite can't pass by skipping)."""
    import importlib
    import pkgutil

    from langgraph.checkpoint.conformance import spec

    total = 0
    for info in pkgutil.iter_modules(spec.__path__):
        module = importlib.import_module(f"{spec.__name__}.{info.name}")
        total += sum(
            len(v) for k, v in vars(module).items() if k.startswith("ALL_") and k.endswith("_TESTS")
        )
    return total
