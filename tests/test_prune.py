"""The prune node: old tool outputs, repetition, hop distance and the three strategies.

The examples are built so that each policy has exactly one right answer: tool outputs
with distinct tool names, filler turns with no entities (so only adjacency, tool
calls, reply-to and the one rare entity we plant link them), and budgets chosen so
the cache tier has room for some candidates but not all.
"""

from __future__ import annotations

import importlib
from typing import Any

import pytest
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langgraph.runtime import Runtime

from llmctx.nodes import ContextConfig, window_messages
from llmctx.nodes._deps import NodeDeps
from llmctx.nodes.budget import assemble_window
from llmctx.nodes.pipeline import compress_frame
from llmctx.nodes.prune import entities, hop_distances, prune, prune_window
from llmctx.nodes.state import Frame
from llmctx.runtime import Settings
from llmctx.templates.schema import PinPolicy, PruningPolicy, SummarizationPolicy
from tests._strategies import (
    OFFLINE,
    base_deps,
    check_frame,
    check_transition,
    forget_other_threads,
    make_deps,
    shown_ids,
)

BASE = base_deps()


@pytest.fixture(autouse=True)
def _fresh_link_index() -> None:
    forget_other_threads()  # each test its own thread (see KNOWN_BUGS "link-index-shared")


def _template(pins: PinPolicy | None = None, **pruning: Any) -> Any:
    return BASE.template.model_copy(
        update={
            "name": "prune-test",
            "system_prompt": "Be brief.",
            "pruning": PruningPolicy(**pruning),
            "summarization": SummarizationPolicy(enabled=False),
            "pinned": pins or PinPolicy(),
        }
    )


def _deps(budget: int, pins: PinPolicy | None = None, **pruning: Any) -> NodeDeps:
    return make_deps(BASE, _template(pins, **pruning), budget)


def _ids(frame: Frame, tier: str | None = None) -> list[str]:
    return [
        it["id"]
        for it in frame["window"]
        if it["kind"] == "message" and (tier is None or it["tier"] == tier)
    ]


def _reasons(frame: Frame) -> dict[str, str]:
    return {p["id"]: p["reason"] for p in frame["pruned"]}


# -- old tool outputs ---------------------------------------------------------------------

TOOLS = ["search", "read_file", "run_sql", "grep", "list_dir"]


def _tool_session() -> list[BaseMessage]:
    out: list[BaseMessage] = []
    for i, name in enumerate(TOOLS):
        out.append(HumanMessage(f"step {i}", id=f"h{i}"))
        out.append(
            AIMessage("", tool_calls=[{"name": name, "args": {"i": i}, "id": f"c{i}"}], id=f"a{i}")
        )
        out.append(
            ToolMessage(f"output {i}: " + "data " * 80, tool_call_id=f"c{i}", id=f"t{i}", name=name)
        )
    out.append(HumanMessage("what now?", id="q"))
    return out


def test_the_last_k_tool_outputs_stay_verbatim_older_ones_name_tool_and_version() -> None:
    messages = _tool_session()
    deps = _deps(5_000, keep_tool_outputs=2, max_hops=50)
    assembled = assemble_window(messages, deps)
    pruned = prune_window(messages, deps, assembled, version="ckpt-1")
    check_frame(messages, pruned, deps, where="prune")
    items = shown_ids(pruned)
    for i, name in enumerate(TOOLS):
        item = items[f"t{i}"]
        if i >= 3:  # the newest two
            assert "content" not in item
            continue
        assert item["shown"] == "placeholder"
        assert f"`{name}`" in item["content"] and "ckpt-1" in item["content"]
        assert f"message t{i}" in item["content"]
        assert (
            item["tokens"] < item["full_tokens"] == deps.counter.count_message(messages[3 * i + 2])
        )
        assert "tool output cleared" in _reasons(pruned)[f"t{i}"]
    # Every call still has its (placeholder) answer, and the history is untouched.
    sent = window_messages({"messages": messages, "context": pruned})
    assert [m.id for m in sent if isinstance(m, ToolMessage)] == [f"t{i}" for i in range(5)]
    assert all(m.content.startswith("output") for m in messages if isinstance(m, ToolMessage))
    assert pruned["last_op"]["op"] == "prune"

    unversioned = prune_window(messages, deps, assembled)
    assert "the thread history" in shown_ids(unversioned)["t0"]["content"]


def test_keep_zero_clears_every_tool_output_and_a_large_k_clears_none() -> None:
    messages = _tool_session()
    none_kept = prune_window(
        messages, d := _deps(5_000, keep_tool_outputs=0), assemble_window(messages, d)
    )
    assert all(shown_ids(none_kept)[f"t{i}"].get("shown") == "placeholder" for i in range(5))
    all_kept = prune_window(
        messages, d := _deps(5_000, keep_tool_outputs=10), assemble_window(messages, d)
    )
    assert all("content" not in shown_ids(all_kept)[f"t{i}"] for i in range(5))


# -- repetition -----------------------------------------------------------------------------


def _repeats() -> list[BaseMessage]:
    return [
        HumanMessage("status of build 42?", id="h0"),
        AIMessage("The build 42 is green.", id="a1"),
        HumanMessage("and now?", id="h2"),
        AIMessage("The build 42 is green.", id="a3"),
        AIMessage("", tool_calls=[{"name": "ci", "args": {}, "id": "c4"}], id="a4"),
        ToolMessage("job 7 passed", tool_call_id="c4", id="t4", name="ci"),
        AIMessage("", tool_calls=[{"name": "ci", "args": {}, "id": "c5"}], id="a5"),
        ToolMessage("job 7 passed", tool_call_id="c5", id="t5", name="ci"),
        HumanMessage("thanks, anything else?", id="q"),
    ]


def test_dedupe_keeps_the_newest_copy() -> None:
    messages = _repeats()
    deps = _deps(3_000, keep_tool_outputs=10, dedupe=True)
    pruned = prune_window(messages, deps, assemble_window(messages, deps))
    check_frame(messages, pruned, deps, where="dedupe")
    ids = _ids(pruned)
    assert "a1" not in ids and "a3" in ids
    assert _reasons(pruned)["a1"] == "duplicate of a3"
    # A repeated tool result keeps its call answered, by a placeholder naming the copy.
    items = shown_ids(pruned)
    assert items["t4"]["shown"] == "placeholder" and "t5" in items["t4"]["content"]
    assert "a4" in items and "content" not in items["t5"]
    assert {h["id"] for h in pruned["handoff"]} >= {"a1"}

    kept = prune_window(
        messages,
        d := _deps(3_000, keep_tool_outputs=10, dedupe=False),
        assemble_window(messages, d),
    )
    assert {"a1", "a3"} <= set(_ids(kept)) and "content" not in shown_ids(kept)["t4"]


# -- hop distances ----------------------------------------------------------------------------

_SHORT = ["ok", "so", "we", "go", "on", "yes", "can", "do", "it", "and"]
_SHORT += ["then", "what", "not", "sure", "yet", "big", "red", "cat", "sat", "mat"]


def _plain(i: int) -> str:
    """A unique text without entities: three short lowercase words (base-20 digits of i)."""
    return " ".join(_SHORT[i // d % len(_SHORT)] for d in (400, 20, 1))


def _filler(n: int, prefix: str = "m") -> list[BaseMessage]:
    cls = (HumanMessage, AIMessage)
    return [cls[i % 2](_plain(i + 7), id=f"{prefix}{i}") for i in range(n)]


def test_filler_has_no_entities_and_no_repeats() -> None:
    texts = [str(m.content) for m in _filler(400)]
    assert len(set(texts)) == len(texts)
    assert all(entities(text) == frozenset() for text in texts)


def test_a_tool_call_is_one_hop_from_each_of_its_results() -> None:
    messages = [
        *_filler(4),
        AIMessage(
            "",
            tool_calls=[{"name": "f", "args": {}, "id": f"c{j}"} for j in range(3)],
            id="call",
        ),
        *[ToolMessage("done", tool_call_id=f"c{j}", id=f"r{j}") for j in range(3)],
        *_filler(4, "n"),
    ]
    at = {m.id: i for i, m in enumerate(messages)}
    d = hop_distances(messages, 0, at["call"], max_hops=3)
    assert d[at["r2"]] == 1  # three positions away, linked directly
    d = hop_distances(messages, 0, at["r2"], max_hops=3)
    assert d[at["call"]] == 1 and d[at["r0"]] == 2


def test_reply_to_links_two_distant_messages() -> None:
    messages = _filler(30, "r")
    messages[25] = AIMessage("go on then", id="r25", additional_kwargs={"reply_to": "r2"})
    d = hop_distances(messages, 0, 25, max_hops=2)
    assert d[2] == 1 and d[1] == 2 and d[3] == 2
    assert 10 not in d  # beyond max_hops along the chain
    assert max(d.values()) <= 2


def test_a_rare_shared_entity_links_and_a_common_one_does_not() -> None:
    messages = _filler(40, "z")
    messages[3] = AIMessage("we met Zanzibar there", id="z3")
    messages[39] = HumanMessage("tell me about Zanzibar", id="z39")
    assert hop_distances(messages, 0, 39, max_hops=3)[3] == 1

    # "Caroline" is in every message: it links nothing.
    common = [m.model_copy(update={"content": f"{m.content} Caroline"}) for m in _filler(40, "c")]
    d = hop_distances(common, 0, 39, max_hops=3)
    assert 3 not in d and set(d) == {39, 38, 37, 36}


def _two_histories_with_the_same_ids(p: str) -> tuple[list[BaseMessage], list[BaseMessage]]:
    """Two conversations whose ids coincide (ids are per thread: replays of transcripts,
    or counters, give every thread "m0", "m1", ...); only the second links x3 to
    the focus, through the rare entity "Zanzibar"."""
    first = _filler(30, p)
    second = _filler(40, p)
    second[3] = AIMessage("we met Zanzibar there", id=f"{p}3")
    second[39] = HumanMessage("tell me about Zanzibar", id=f"{p}39")
    return first, second


def test_the_link_index_is_not_shared_between_histories_with_the_same_ids() -> None:
    first, second = _two_histories_with_the_same_ids("x")
    hop_distances(first, 0, 29, max_hops=3)  # another thread, seen earlier
    assert hop_distances(second, 0, 39, max_hops=3).get(3) == 1


def test_an_edited_message_is_relinked() -> None:
    before = _filler(40, "y")
    before[39] = HumanMessage("tell me about Zanzibar", id="y39")
    assert 3 not in hop_distances(before, 0, 39, max_hops=1)
    after = list(before)
    after[3] = AIMessage("we met Zanzibar there", id="y3")  # edited in place
    assert hop_distances(after, 0, 39, max_hops=1).get(3) == 1


def test_the_window_does_not_depend_on_other_threads() -> None:
    first, second = _two_histories_with_the_same_ids("w")
    deps = _deps(200, strategy="priority", max_hops=1)  # the horizon reaches w3
    alone = compress_frame(second, deps)
    assert "w3" in _ids(alone, "cache")  # one hop from the focus, via Zanzibar
    compress_frame(first, deps)  # another thread with the same ids
    assert compress_frame(second, deps) == alone


def test_a_pin_below_the_horizon_is_not_located_by_another_histories_index() -> None:
    """Found by the pipeline property (a flaky failure: it depended on the example
    before). Another thread with the same first message left a link index whose
    id map put t1 before a1; reused (verified from the horizon on only), it
    located the pinned unit below the horizon in the wrong order, so the prompt sent
    t1 before its call."""
    head = HumanMessage("start", id="z0")
    a1 = AIMessage("", tool_calls=[{"name": "f", "args": {}, "id": "c1"}], id="a1")
    t1 = ToolMessage("result one", tool_call_id="c1", id="t1", name="f")
    other = [head, t1, a1, HumanMessage("q", id="q")]
    history = [
        head,
        a1,
        t1,
        *_filler(80, "f"),
        AIMessage("", tool_calls=[{"name": "g", "args": {}, "id": "c2"}], id="a2"),
        ToolMessage("output two " * 20, tool_call_id="c2", id="t2", name="g"),
        HumanMessage("more", id="q2"),
    ]
    deps = _deps(150, keep_tool_outputs=0)
    alone = compress_frame(history, deps, {"pinned": ["t1"]})
    # The module, not `llmctx.nodes.prune` the node function that shadows it.
    importlib.import_module("llmctx.nodes.prune")._INDEXES.clear()
    compress_frame(other, deps)  # the other thread, seen first
    frame = compress_frame(history, deps, {"pinned": ["t1"]})
    assert frame["horizon"]["floor"] > len(other)  # the pin is below the horizon
    assert frame["last_op"]["op"] == "prune"  # the prune node rebuilt the window
    check_frame(history, frame, deps, where="reused index")
    assert frame == alone


# -- distance from the focus and the strategies --------------------------------------------------


def _zanzibar() -> list[BaseMessage]:
    """24 filler turns; m3 mentions Zanzibar, m5 Kilimanjaro; the focus asks about Zanzibar."""
    messages = _filler(24)
    messages[3] = AIMessage("we met Zanzibar there", id="m3")
    messages[5] = AIMessage("we climbed Kilimanjaro", id="m5")
    messages.append(HumanMessage("tell me about Zanzibar", id="q"))
    return messages


def _pruned(
    messages: list[BaseMessage], budget: int, previous: Frame | None = None, **pruning: Any
) -> tuple[Frame, Frame]:
    deps = _deps(budget, **pruning)
    assembled = assemble_window(messages, deps, previous)
    return assembled, prune_window(messages, deps, assembled)


def test_items_beyond_max_hops_go_first_under_pressure() -> None:
    messages = _zanzibar()
    assembled, near = _pruned(messages, 120, max_hops=1)
    recency_cache = _ids(assembled, "cache")
    assert "m3" not in recency_cache  # recency alone would not reach it
    assert "m3" in _ids(near, "cache")  # one hop from the focus: it comes first
    evicted = [mid for mid in recency_cache if mid not in _ids(near)]
    assert evicted, "the far items made room for the near one"
    reasons = _reasons(near)
    for mid in evicted:
        assert reasons[mid] == "more than 1 hops from the focus"
        assert mid in {h["id"] for h in near["handoff"]}
    # The far items left oldest first: the newest far ones stay.
    pos = {m.id: i for i, m in enumerate(messages)}
    stayed = set(recency_cache) - set(evicted)
    assert stayed and max(pos[e] for e in evicted) < min(pos[k] for k in stayed)


def test_items_beyond_max_hops_stay_while_there_is_room() -> None:
    messages = _zanzibar()
    _, roomy = _pruned(messages, 1_000, max_hops=1)
    assert _ids(roomy) == [str(m.id) for m in messages]
    assert not any("hops" in p["reason"] for p in roomy["pruned"])


def test_recency_lru_and_priority_select_different_sets() -> None:
    messages = _zanzibar()
    # The previous turn's focus was about Kilimanjaro: LRU remembers m5 was used then.
    earlier = [*messages[:-1], HumanMessage("and Kilimanjaro?", id="q0")]
    lru_deps = _deps(120, strategy="lru", max_hops=50)
    before = compress_frame(earlier, lru_deps)
    assert before["last_used"]["m5"] == before["turn"]
    history = [*earlier, AIMessage("it was cold", id="r0"), messages[-1]]

    caches = {}
    for strategy in ("recency", "lru", "priority"):
        previous = before if strategy == "lru" else None
        _, frame = _pruned(history, 120, previous, strategy=strategy, max_hops=50)
        check_frame(history, frame, _deps(120, strategy=strategy, max_hops=50), where=strategy)
        caches[strategy] = set(_ids(frame, "cache"))
    recency, lru, priority = caches["recency"], caches["lru"], caches["priority"]
    assert len({frozenset(c) for c in caches.values()}) == 3, caches
    # recency: the newest run just below the important tier; it cannot reach m3 or m5.
    assert "m3" not in recency and "m5" not in recency
    # priority: fewest hops first, so m3 (one hop, via Zanzibar) and its neighbours.
    assert {"m2", "m3", "m4"} <= priority
    # lru: what was relevant most recently: m3 (this turn) and m5 (last turn).
    assert {"m3", "m5"} <= lru


# -- pins, reporting, and the node ---------------------------------------------------------------


def test_pinned_items_are_never_pruned() -> None:
    messages = [
        HumanMessage("Zanzibar notes", id="zn"),  # pinned by the template's pattern
        HumanMessage("step 4", id="dup"),  # repeats h4, pinned by the user
        *_tool_session(),
    ]
    deps = _deps(
        400,
        pins=PinPolicy(patterns=("Zanzibar",)),
        keep_tool_outputs=0,
        max_hops=0,
        strategy="priority",
    )
    start: Frame = {"pinned": ["t1", "dup"]}
    assembled = assemble_window(messages, deps, start)
    pruned = prune_window(messages, deps, assembled, version="v")
    check_frame(messages, pruned, deps, where="pins")
    items = shown_ids(pruned)
    for mid in ("a1", "t1", "dup", "zn"):  # t1 pins its whole tool unit
        assert mid in items and items[mid]["tier"] == "critical", mid
        assert "content" not in items[mid], f"pinned {mid} was rewritten"
        assert mid not in _reasons(pruned)
    final = compress_frame(messages, deps, start)
    assert {"a1", "t1", "dup", "zn"} <= set(_ids(final))


def test_every_id_that_leaves_is_in_pruned_with_a_reason_and_in_handoff() -> None:
    messages = _zanzibar()
    for strategy in ("recency", "lru", "priority"):
        assembled, pruned = _pruned(messages, 120, strategy=strategy, max_hops=1)
        left = set(_ids(assembled)) - set(_ids(pruned))
        assert left
        reasons = _reasons(pruned)
        handoff = {h["id"]: h["reason"] for h in pruned["handoff"]}
        for mid in left:
            assert reasons.get(mid) and handoff.get(mid) == reasons[mid], (strategy, mid)


def _runtime(template: Any, budget: int) -> Runtime[ContextConfig]:
    settings = Settings.load(tokenizer=OFFLINE, workspace="/tmp/.llmctx-prune-tests")
    return Runtime(context=ContextConfig(template=template, budget=budget, settings=settings))


def test_the_prune_node_returns_nothing_when_nothing_changes() -> None:
    chat = _filler(6, "n")
    deps = _deps(2_000)
    runtime = _runtime(deps.template, 2_000)
    frame = assemble_window(chat, deps)
    assert prune({"messages": chat, "context": frame}, runtime) == {}

    tools = _tool_session()
    deps = _deps(2_000, keep_tool_outputs=1)
    runtime = _runtime(deps.template, 2_000)
    update = prune({"messages": tools, "context": assemble_window(tools, deps)}, runtime)
    frame = update["context"]
    assert frame["last_op"]["op"] == "prune"
    assert shown_ids(frame)["t0"]["shown"] == "placeholder"
    # Pruning a pruned frame changes nothing: no new version.
    assert prune({"messages": tools, "context": frame}, runtime) == {}
    assert prune_window(tools, deps, frame) is frame


def test_the_prune_node_rebuilds_a_stale_frame_and_reports_both_stages() -> None:
    """Without a budget node before it, the prune node assembles the window itself:
    that frame is always written (never the stale one left in the state), and what
    either stage removed is in `pruned`."""
    tools = _tool_session()
    deps = _deps(300, keep_tool_outputs=1)
    runtime = _runtime(deps.template, 300)
    old = assemble_window(tools[:6], deps)
    assert _ids(old) == ["h0", "a0", "t0", "h1", "a1", "t1"]
    frame = prune({"messages": tools, "context": old}, runtime)["context"]
    assert frame["history_messages"] == len(tools)
    assert "h2" in _ids(frame) and "h2" not in _ids(assemble_window(tools, deps, old))  # pruned
    check_frame(tools, frame, deps, where="stale")
    check_transition(tools, old, frame, where="stale")
    # The assemble stage evicted these; the prune stage changed the window after it.
    assert {m: _reasons(frame).get(m) for m in ("h0", "a0", "t0")} == dict.fromkeys(
        ("h0", "a0", "t0"), "out of budget (recency)"
    )

    # A stale frame is replaced even when the pruning policy changes nothing.
    chat = _filler(8, "n")
    deps = _deps(2_000)
    runtime = _runtime(deps.template, 2_000)
    update = prune({"messages": chat, "context": assemble_window(chat[:4], deps)}, runtime)
    assert update["context"] == assemble_window(chat, deps, assemble_window(chat[:4], deps))


@pytest.mark.parametrize("strategy", ["recency", "lru", "priority"])
def test_pruning_is_deterministic(strategy: str) -> None:
    messages = [*_tool_session()[:-1], *_zanzibar()]
    deps = _deps(300, strategy=strategy, max_hops=2, keep_tool_outputs=1)
    first = prune_window(messages, deps, assemble_window(messages, deps), version="v1")
    again = prune_window(messages, deps, assemble_window(messages, deps), version="v1")
    assert first == again
