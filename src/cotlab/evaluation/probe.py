"""The CODI probe's write-up: for each sampled question, what each continuous thought reads as through the LM head
(its top-k tokens and their probabilities), next to the gold answer, CODI's output and the reasoning the thoughts
replace, and how often the thoughts name the reasoning's entities. Text only: the probing itself runs the model
(cotlab.methods.codi.probe)."""

from __future__ import annotations

import re
from typing import NamedTuple

from cotlab.evaluation.stats import mcnemar_exact, wilson_interval
from cotlab.schema import Example


class ProbeRecord(NamedTuple):
    """One probed question: the example, CODI's answer to it and what its thoughts read as."""

    example: Example
    output: str  # CODI's decoded answer, untrimmed as generated
    thoughts: list[dict]  # codi.probe's rows: {"thought": k, "tokens": [...], "probs": [...]}

    def row(self) -> dict:
        """The record as a line of probe.jsonl (the reasoning stays in the data, not in the probe's rows)."""
        ex = self.example
        return {"id": ex.id, "question": ex.question, "gold": ex.answer, "output": self.output,
                "thoughts": self.thoughts}


def _thought_rows(thoughts: list[dict]) -> list[str]:
    """A table row per thought: its top tokens with their probabilities, most probable first."""
    return [f"| {t['thought']} | " + ", ".join(f"`{tok!r}` {p:.2f}" for tok, p in zip(t["tokens"], t["probs"]))
            + " |" for t in thoughts]


def probe_markdown(task: str, top_k: int, n_thoughts: int, records: list[ProbeRecord]) -> str:
    """probe.md: a header, then per record its question, gold and output, the replaced reasoning and a table of its
    thoughts' top tokens. Tokens are shown repr'd in backticks so whitespace and newlines stay visible."""
    lines = [f"# CODI probe: {task}", "",
             f"Each continuous thought's source state read through the LM head (top {top_k} tokens, probability), "
             f"{n_thoughts} thoughts per question.", ""]
    for ex, output, thoughts in records:
        lines += [f"## {ex.id}", "", f"**Question:** {ex.question}", "",
                  f"**Gold:** {ex.answer} | **CODI:** {output.strip()!r}", "",
                  f"**Reasoning replaced:** {ex.reasoning}", "", "| thought | top tokens |", "|---|---|",
                  *_thought_rows(thoughts), ""]
    return "\n".join(lines)


def _entities(example: Example) -> set[str]:
    """The words the thoughts replace: capitalised words of the reasoning that the question does not show (for
    personal relations, the intermediate people and the answer)."""
    shown = set(re.findall(r"\w+", example.question))
    return {w for w in re.findall(r"\b[A-Z]\w+", example.reasoning) if w not in shown and w != "The"}


def _hits(thoughts: list[dict], entities: set[str]) -> bool:
    """Whether any thought's top tokens start one of the entities (a token of two characters or more, so a lone
    capital letter does not count)."""
    tokens = {t.strip() for thought in thoughts for t in thought["tokens"]}
    return any(len(t) >= 2 and e.startswith(t) for t in tokens for e in entities)


def probe_relevance(records: list[ProbeRecord], confidence: float = 0.95) -> dict:
    """How often the thoughts' top tokens name what the replaced reasoning names (its intermediate entities and the
    answer), against a control: the same thoughts scored on the next record's entities. Paired per question with an
    exact McNemar test; task-relevant thoughts hit their own entities more often than another question's."""
    own, control = [], []
    for i, record in enumerate(records):
        mine = _entities(record.example)
        other = _entities(records[(i + 1) % len(records)].example) - mine
        if not mine or not other:
            continue
        own.append(_hits(record.thoughts, mine))
        control.append(_hits(record.thoughts, other))
    n = len(own)
    if not n:
        return {"relevance_n": 0, "relevance_hit_rate": None, "relevance_control_rate": None, "relevance_p": None}
    low, high = wilson_interval(sum(own), n, confidence)
    return {"relevance_n": n, "relevance_hit_rate": sum(own) / n, "relevance_hit_rate_ci_low": low,
            "relevance_hit_rate_ci_high": high, "relevance_control_rate": sum(control) / n,
            "relevance_p": mcnemar_exact(own, control)["p_value"]}
