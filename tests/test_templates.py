"""Templates: packaged YAML, the schema's bounds, inheritance, user overrides, located
errors and cache invalidation."""

from __future__ import annotations

import os
import re
import textwrap
import time
from pathlib import Path

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from pydantic import ValidationError
from rich.console import Console

from llmctx.runtime.errors import TemplateError, TemplateNotFoundError
from llmctx.templates import (
    Template,
    TemplateRegistry,
    TierSplit,
    load_template,
    template_detail,
    template_table,
)
from llmctx.templates.loader import validate_data
from llmctx.templates.schema import DEFAULT_SUMMARY_PROMPT, SummarizationPolicy

PACKAGED = ["business", "creative", "data_science", "general", "technical", "web_development"]


def write(folder: Path, name: str, body: str) -> Path:
    """Write a template file and return its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(textwrap.dedent(body).lstrip("\n"), encoding="utf-8")
    return path


def touch_later(path: Path) -> None:
    """Move mtime forward so a change is visible even on coarse-timestamp filesystems."""
    st_ = path.stat()
    os.utime(path, ns=(st_.st_atime_ns, st_.st_mtime_ns + 2_000_000_000))


@pytest.fixture
def user_dir(tmp_path: Path) -> Path:
    return tmp_path / ".llm" / "templates"


# -- packaged templates ------------------------------------------------------------


def test_packaged_names() -> None:
    assert TemplateRegistry().names() == PACKAGED


@pytest.mark.parametrize("name", PACKAGED)
def test_every_packaged_template_loads_and_is_complete(name: str) -> None:
    t = TemplateRegistry().get(name)
    tiers = t.budget.tiers
    assert t.name == name
    assert abs(tiers.critical + tiers.important + tiers.supporting + tiers.cache - 1) < 1e-6
    assert len(t.system_prompt) > 200 and t.description
    assert t.summarization.prompt != DEFAULT_SUMMARY_PROMPT  # a real domain prompt
    assert 3 <= len(t.triggers.examples) <= 6 and t.triggers.keywords
    assert t.summarization.target_tokens < t.summarization.trigger_tokens


def test_packaged_files_validate_directly() -> None:
    reg = TemplateRegistry()
    for info in reg.list():
        assert info.source == "packaged" and info.error is None
        assert reg.validate(info.path) == reg.get(info.name)


def test_web_development_extends_technical() -> None:
    reg = TemplateRegistry()
    web, tech = reg.get("web_development"), reg.get("technical")
    assert reg.info("web_development").extends == "technical"
    # Inherited whole sections, overridden prompt, replaced (not concatenated) lists.
    assert web.pruning == tech.pruning and web.budget == tech.budget
    assert web.summarization.trigger_tokens == tech.summarization.trigger_tokens
    assert web.system_prompt != tech.system_prompt
    assert "traceback" in tech.triggers.keywords and "traceback" not in web.triggers.keywords
    assert web.fingerprint != tech.fingerprint


# -- schema bounds -------------------------------------------------------------------


def test_minimal_template_gets_defaults() -> None:
    t = Template(name="mini")
    assert t.budget.tiers.allocate(1000) == {
        "critical": 200,
        "important": 400,
        "supporting": 300,
        "cache": 100,
    }
    assert t.retrieval.namespaces == ("mini",)
    assert t.budget.context_window is None and t.tools is None


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"summarization": {"trigger_tokens": 1000, "target_tokens": 1000}}, "summarization"),
        ({"budget": {"context_window": 1000, "output_reserve": 1000}}, "budget"),
        ({"retrieval": {"min_score": 1.5}}, "retrieval.min_score"),
        ({"pinned": {"patterns": ["("]}}, "pinned.patterns"),
        ({"triggers": {"keywords": ["API", "api"]}}, "triggers.keywords"),
        ({"name": "Bad Name"}, "name"),
    ],
)
def test_bounds_are_enforced(data: dict, field: str) -> None:
    with pytest.raises(ValidationError) as info:
        Template.model_validate({"name": "x", **data})
    assert {".".join(map(str, e["loc"])) for e in info.value.errors()} == {field}


def test_fingerprint_is_stable_and_sensitive() -> None:
    a = TemplateRegistry().get("general")
    b = TemplateRegistry().get("general")
    assert a is not b and a.fingerprint == b.fingerprint
    changed = a.model_copy(update={"system_prompt": a.system_prompt + "!"})
    assert Template.model_validate(changed.model_dump()).fingerprint != a.fingerprint


@given(
    trigger=st.integers(2, 10**6),
    ratio=st.floats(0.0, 0.999),
    fraction=st.none() | st.floats(0.01, 1.0),
    budget=st.integers(1, 10**7),
)
def test_summarization_thresholds_keep_target_below_trigger(
    trigger: int, ratio: float, fraction: float | None, budget: int
) -> None:
    target = max(1, min(trigger - 1, int(trigger * ratio)))
    policy = SummarizationPolicy(
        trigger_tokens=trigger, target_tokens=target, trigger_fraction=fraction
    )
    eff_trigger, eff_target = policy.thresholds(budget)
    assert 0 <= eff_target < eff_trigger <= trigger


# -- tier split property -------------------------------------------------------------


@given(st.lists(st.integers(0, 1000), min_size=4, max_size=4).filter(any))
def test_any_split_summing_to_one_validates(weights: list[int]) -> None:
    total = sum(weights)
    parts = [w / total for w in weights]
    split = TierSplit(critical=parts[0], important=parts[1], supporting=parts[2], cache=parts[3])
    for budget in (0, 1, 7, 128_000):
        assert sum(split.allocate(budget).values()) == budget


@given(st.lists(st.floats(0.0, 1.0), min_size=4, max_size=4))
def test_any_split_not_summing_to_one_is_rejected(parts: list[float]) -> None:
    assume(abs(sum(parts) - 1.0) > 1e-6)
    with pytest.raises(ValidationError, match=r"must sum to 1\.0"):
        TierSplit(critical=parts[0], important=parts[1], supporting=parts[2], cache=parts[3])


# -- user templates, inheritance -----------------------------------------------------


def test_user_template_overrides_packaged(user_dir: Path) -> None:
    write(user_dir, "general", "description: mine\nsystem_prompt: Be terse.\n")
    reg = TemplateRegistry(user_dir)
    t = reg.get("general")
    assert t.system_prompt == "Be terse." and t.description == "mine"
    assert t.pruning.max_hops == 3  # schema default: nothing inherited without extends
    info = reg.info("general")
    assert info.source == "user" and info.overrides and info.path == str(user_dir / "general.yaml")
    assert reg.names() == PACKAGED


def test_user_template_can_extend_packaged_of_same_name(user_dir: Path) -> None:
    write(user_dir, "general", "extends: general\npruning:\n  keep_tool_outputs: 9\n")
    write(user_dir, "mine", "extends: general\n")
    reg = TemplateRegistry(user_dir)
    packaged = TemplateRegistry().get("general")
    t = reg.get("general")
    assert t.pruning.keep_tool_outputs == 9
    assert t.pruning.strategy == packaged.pruning.strategy
    assert t.system_prompt == packaged.system_prompt
    # Any other template extending `general` gets the user's version.
    assert reg.get("mine").pruning.keep_tool_outputs == 9


def test_two_level_chain_deep_merges(user_dir: Path) -> None:
    write(
        user_dir,
        "base",
        """
        description: base
        budget:
          output_reserve: 1000
          tiers: {critical: 0.1, important: 0.5, supporting: 0.3, cache: 0.1}
        pruning: {strategy: lru, keep_tool_outputs: 7}
        triggers: {keywords: [alpha, beta], threshold: 0.9}
        """,
    )
    write(user_dir, "mid", "extends: base\npruning: {max_hops: 5}\ntriggers: {keywords: [gamma]}\n")
    write(user_dir, "leaf", "extends: mid\nbudget: {context_window: 8000}\n")
    leaf = TemplateRegistry(user_dir).get("leaf")
    assert leaf.name == "leaf" and leaf.description == "base"
    assert leaf.budget.context_window == 8000 and leaf.budget.output_reserve == 1000
    assert leaf.budget.tiers.important == 0.5
    assert (leaf.pruning.strategy, leaf.pruning.keep_tool_outputs, leaf.pruning.max_hops) == (
        "lru",
        7,
        5,
    )
    assert leaf.triggers.keywords == ("gamma",)  # lists replace, never concatenate
    assert leaf.triggers.threshold == 0.9
    assert leaf.retrieval.namespaces == ("leaf",)


def test_cycle_is_an_error(user_dir: Path) -> None:
    write(user_dir, "a", "extends: b\n")
    write(user_dir, "b", "extends: c\n")
    write(user_dir, "c", "extends: a\n")
    with pytest.raises(TemplateError, match=r"cycle \(a -> b -> c -> a\)"):
        TemplateRegistry(user_dir).get("a")


def test_self_extend_without_packaged_is_an_error(user_dir: Path) -> None:
    write(user_dir, "solo", "extends: solo\n")
    with pytest.raises(TemplateError, match=r"solo\.yaml:1: extends: 'solo' extends itself"):
        TemplateRegistry(user_dir).get("solo")


def test_unknown_parent_points_to_extends_line(user_dir: Path) -> None:
    path = write(user_dir, "orphan", "description: x\nextends: nobody\n")
    with pytest.raises(TemplateError) as info:
        TemplateRegistry(user_dir).get("orphan")
    assert not isinstance(info.value, TemplateNotFoundError)
    assert str(info.value).startswith(f"{path}:2: extends: unknown parent template 'nobody'")
    assert "general" in str(info.value)


def test_unknown_name_lists_available(user_dir: Path) -> None:
    write(user_dir, "mine", "description: x\n")
    with pytest.raises(TemplateNotFoundError) as info:
        TemplateRegistry(user_dir).get("nope")
    message = str(info.value)
    assert "'nope'" in message
    assert "available: business, creative, data_science, general, mine, technical" in message


def test_name_field_must_match_file(user_dir: Path) -> None:
    path = write(user_dir, "alpha", "description: x\nname: beta\n")
    with pytest.raises(
        TemplateError, match=rf"^{re.escape(str(path))}:2: name: 'beta' does not match"
    ):
        TemplateRegistry(user_dir).get("alpha")


def test_yaml_and_yml_for_one_name_is_an_error(user_dir: Path) -> None:
    write(user_dir, "twice", "description: x\n")
    (user_dir / "twice.yml").write_text("description: y\n")
    reg = TemplateRegistry(user_dir)
    with pytest.raises(TemplateError, match="defined twice"):
        reg.get("twice")
    assert "defined twice" in (reg.info("twice").error or "")


# -- located errors ------------------------------------------------------------------


def test_bad_value_points_to_file_line_field(user_dir: Path) -> None:
    path = write(
        user_dir,
        "foo",
        """
        description: foo
        system_prompt: hi
        budget:
          output_reserve: 100
          tiers:
            critical: lots
        """,
    )
    with pytest.raises(TemplateError) as info:
        TemplateRegistry(user_dir).get("foo")
    assert str(info.value) == (
        f"{path}:6: budget.tiers.critical: Input should be a valid number, "
        "unable to parse string as a number (got 'lots')"
    )


def test_extra_field_points_to_its_line(user_dir: Path) -> None:
    path = write(user_dir, "foo", "pruning:\n  strategy: lru\n  colour: blue\n")
    with pytest.raises(
        TemplateError, match=rf"^{re.escape(str(path))}:3: pruning.colour: unknown field; known"
    ):
        TemplateRegistry(user_dir).get("foo")


def test_missing_value_points_to_its_line(user_dir: Path) -> None:
    path = write(user_dir, "foo", "description: x\n\nsystem_prompt:\n")
    with pytest.raises(
        TemplateError, match=rf"^{re.escape(str(path))}:3: system_prompt: Input should be"
    ):
        TemplateRegistry(user_dir).get("foo")


def test_missing_required_field_points_to_top_of_mapping() -> None:
    marks = {("budget",): ("f.yaml", 4), ("budget", "tiers"): ("f.yaml", 5)}
    with pytest.raises(TemplateError, match=r"^f\.yaml:2: name: Field required$"):
        validate_data({}, marks, "f.yaml", 2)


def test_inherited_bad_value_points_to_parent_file(user_dir: Path) -> None:
    parent = write(user_dir, "parent", "description: p\npruning:\n  max_hops: -1\n")
    child = write(user_dir, "child", "extends: parent\ndescription: c\n")
    reg = TemplateRegistry(user_dir)
    with pytest.raises(
        TemplateError, match=rf"^{re.escape(str(parent))}:3: pruning.max_hops: .*\(got -1\)$"
    ):
        reg.validate(child)


def test_child_override_error_points_to_child_file(user_dir: Path) -> None:
    write(user_dir, "parent", "description: p\npruning:\n  max_hops: 2\n")
    child = write(user_dir, "child", "extends: parent\n\npruning:\n  max_hops: many\n")
    with pytest.raises(TemplateError, match=rf"^{re.escape(str(child))}:4: pruning.max_hops: "):
        TemplateRegistry(user_dir).get("child")


def test_sequence_item_error_points_to_item_line(user_dir: Path) -> None:
    path = write(user_dir, "foo", "pinned:\n  roles:\n    - human\n    - robot\n")
    with pytest.raises(
        TemplateError, match=rf"^{re.escape(str(path))}:4: pinned.roles.1: .*\(got 'robot'\)$"
    ):
        TemplateRegistry(user_dir).get("foo")


def test_malformed_yaml_gives_line_and_column(user_dir: Path) -> None:
    path = write(user_dir, "foo", "description: x\nbudget:\n  tiers: {critical: 0.2\n")
    with pytest.raises(TemplateError, match=rf"^{re.escape(str(path))}:4:1: invalid YAML: "):
        TemplateRegistry(user_dir).get("foo")
    path = write(user_dir, "bar", "description: x\n  system_prompt: y\n")
    with pytest.raises(TemplateError, match=rf"^{re.escape(str(path))}:2:\d+: invalid YAML: "):
        TemplateRegistry(user_dir).get("bar")


def test_non_mapping_and_duplicate_keys(user_dir: Path) -> None:
    path = write(user_dir, "foo", "- a\n- b\n")
    with pytest.raises(
        TemplateError, match=rf"^{re.escape(str(path))}:1: a template must be a mapping"
    ):
        TemplateRegistry(user_dir).get("foo")
    path = write(user_dir, "bar", "description: a\ndescription: b\n")
    with pytest.raises(
        TemplateError, match=rf"^{re.escape(str(path))}:2: description: duplicate field"
    ):
        TemplateRegistry(user_dir).get("bar")


def test_list_reports_broken_templates_without_failing(user_dir: Path) -> None:
    write(user_dir, "broken", "budget: [\n")
    infos = {i.name: i for i in TemplateRegistry(user_dir).list()}
    assert infos["broken"].error and "invalid YAML" in infos["broken"].error
    assert infos["general"].error is None


def test_validate_any_file(tmp_path: Path) -> None:
    path = write(tmp_path / "elsewhere", "draft", "extends: technical\ndescription: d\n")
    t = TemplateRegistry().validate(path)
    assert t.name == "draft" and t.pruning.strategy == "priority"
    with pytest.raises(TemplateError, match=r"must end in \.yaml"):
        TemplateRegistry().validate(tmp_path / "x.txt")


# -- caching -------------------------------------------------------------------------


def test_cache_returns_same_object_until_file_changes(user_dir: Path) -> None:
    path = write(user_dir, "foo", "description: one\n")
    reg = TemplateRegistry(user_dir)
    first = reg.get("foo")
    assert reg.get("foo") is first
    path.write_text("description: two!\n")
    touch_later(path)
    second = reg.get("foo")
    assert second.description == "two!" and second.fingerprint != first.fingerprint


def test_parent_change_invalidates_child(user_dir: Path) -> None:
    parent = write(user_dir, "parent", "pruning: {max_hops: 1}\n")
    write(user_dir, "child", "extends: parent\n")
    reg = TemplateRegistry(user_dir)
    assert reg.get("child").pruning.max_hops == 1
    parent.write_text("pruning: {max_hops: 2}\n")
    touch_later(parent)
    assert reg.get("child").pruning.max_hops == 2


def test_new_user_override_invalidates_packaged_chain(user_dir: Path) -> None:
    reg = TemplateRegistry(user_dir)
    assert reg.get("web_development").pruning.strategy == "priority"
    write(user_dir, "technical", "extends: technical\npruning: {strategy: recency}\n")
    assert reg.get("web_development").pruning.strategy == "recency"
    (user_dir / "technical.yaml").unlink()
    assert reg.get("web_development").pruning.strategy == "priority"


def test_cached_get_is_fast(user_dir: Path) -> None:
    reg = TemplateRegistry(user_dir)
    reg.get("web_development")
    n = 2000
    start = time.perf_counter()
    for _ in range(n):
        reg.get("web_development")
    per_call = (time.perf_counter() - start) / n
    assert per_call < 200e-6  # typically ~5 µs; generous for slow CI machines


def test_load_template_shares_a_registry(user_dir: Path) -> None:
    write(user_dir, "foo", "description: shared\n")
    assert load_template("foo", user_dir) is load_template("foo", str(user_dir))


# -- rendering -----------------------------------------------------------------------


def test_table_and_detail_render(user_dir: Path) -> None:
    write(user_dir, "general", "extends: general\n")
    reg = TemplateRegistry(user_dir)
    table = template_table(reg.list())
    assert table.row_count == len(PACKAGED)
    console = Console(width=160, record=True)
    console.print(table)
    console.print(template_detail(reg.get("general"), reg.info("general")))
    out = console.export_text()
    assert "user (overrides)" in out and "web_development" in out
    assert reg.get("general").fingerprint in out and "keep_tool_outputs" in out


def test_names_never_become_paths(user_dir: Path, tmp_path: Path) -> None:
    write(tmp_path / ".llm", "secret", "description: outside\n")
    reg = TemplateRegistry(user_dir)
    with pytest.raises(TemplateNotFoundError):
        reg.get("../secret")
    write(user_dir, "sneaky", "extends: ../secret\n")
    with pytest.raises(TemplateError, match=r"unknown parent template '\.\./secret'"):
        reg.get("sneaky")
    write(user_dir, "Bad Name", "description: x\n")
    with pytest.raises(TemplateError, match="not a valid template name"):
        reg.get("Bad Name")
