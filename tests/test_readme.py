"""Every Python sample in the README runs, in order, as a reader would paste them.

The samples share one namespace (a later one may use what an earlier one defined)
and run in a fresh working directory, so the `.llm/` workspace they create is the
test's own. A sample that raises fails the test with the sample's line number.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def _samples() -> list[tuple[int, str]]:
    text = README.read_text(encoding="utf-8")
    return [(text[: m.start()].count("\n") + 1, m.group(1)) for m in _BLOCK.finditer(text)]


def test_readme_has_python_samples() -> None:
    assert len(_samples()) >= 4


def test_readme_python_samples_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("LLMCTX_LLM_BASE_URL", "LLMCTX_LLM_API_KEY", "LLMCTX_LLM__BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    namespace: dict[str, object] = {"__name__": "readme"}
    for line, code in _samples():
        try:
            exec(compile(code, f"README.md:{line}", "exec"), namespace)
        except Exception as exc:  # pragma: no cover - the failure message is the point
            pytest.fail(f"README sample at line {line} failed: {type(exc).__name__}: {exc}")
