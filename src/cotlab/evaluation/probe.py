"""The CODI probe's write-up: for each sampled question, what each continuous thought reads as through the LM head
(its top-k tokens and their probabilities), next to the gold answer, CODI's output and the reasoning the thoughts
replace. Text only: the probing itself runs the model (cotlab.methods.codi.probe)."""

from __future__ import annotations

from typing import NamedTuple

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
