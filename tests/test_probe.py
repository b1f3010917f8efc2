"""The CODI probe's write-up (probe.md) and rows (probe.jsonl), from hand-made probe records: no model."""
from cotlab.evaluation.probe import ProbeRecord, probe_markdown
from cotlab.schema import Example

RECORDS = [
    ProbeRecord(Example(id="gsm-1", question="Tom has 3 apples and buys 4. How many?", answer="7",
                        answer_type="number", reasoning="3 + 4 = 7"),
                " 7\n",
                [{"thought": 1, "tokens": [" 3", "+"], "probs": [0.6, 0.25]},
                 {"thought": 2, "tokens": ["7", "\n"], "probs": [0.9, 0.012]}]),
    ProbeRecord(Example(id="gsm-2", question="Half of 10?", answer="5", answer_type="number", reasoning="10 / 2 = 5"),
                "6",
                [{"thought": 1, "tokens": ["'"], "probs": [1.0]}]),
]


def test_the_markdown_shows_each_question_and_its_thoughts_top_tokens():
    assert probe_markdown("gsm8k", 2, 2, RECORDS) == "\n".join([
        "# CODI probe: gsm8k",
        "",
        "Each continuous thought's source state read through the LM head (top 2 tokens, probability), 2 thoughts per "
        "question.",
        "",
        "## gsm-1",
        "",
        "**Question:** Tom has 3 apples and buys 4. How many?",
        "",
        "**Gold:** 7 | **CODI:** '7'",  # the output stripped, then repr'd
        "",
        "**Reasoning replaced:** 3 + 4 = 7",
        "",
        "| thought | top tokens |",
        "|---|---|",
        "| 1 | `' 3'` 0.60, `'+'` 0.25 |",  # repr keeps a token's leading space visible
        "| 2 | `'7'` 0.90, `'\\n'` 0.01 |",
        "",
        "## gsm-2",
        "",
        "**Question:** Half of 10?",
        "",
        "**Gold:** 5 | **CODI:** '6'",
        "",
        "**Reasoning replaced:** 10 / 2 = 5",
        "",
        "| thought | top tokens |",
        "|---|---|",
        '| 1 | `"\'"` 1.00 |',
        "",
    ])


def test_no_records_is_the_header_alone_without_a_final_newline():
    assert probe_markdown("svamp", 5, 6, []) == (
        "# CODI probe: svamp\n\nEach continuous thought's source state read through the LM head (top 5 tokens, "
        "probability), 6 thoughts per question.\n")


def test_a_row_keeps_the_output_untrimmed_and_leaves_the_reasoning_out():
    assert [r.row() for r in RECORDS][0] == {
        "id": "gsm-1", "question": "Tom has 3 apples and buys 4. How many?", "gold": "7", "output": " 7\n",
        "thoughts": RECORDS[0].thoughts}


def test_probe_relevance_counts_the_reasonings_names_against_another_questions():
    from cotlab.evaluation.probe import probe_relevance

    def record(i, start, middle, answer, top):
        ex = Example(id=f"pr-{i}", question=f"Who is the boss of the friend of {start}?", answer=answer,
                     answer_type="name", reasoning=f"The friend of {start} is {middle}. The boss of {middle} is {answer}.")
        return ProbeRecord(ex, answer, [{"thought": 1, "tokens": top, "probs": [0.5] * len(top)}])

    names = [("Hugo", "Kevin", "Bella"), ("Tina", "Paula", "Oscar"), ("Zoe", "Ivy", "Felix"), ("Umar", "Nina", "Ruben")]
    on_topic = [record(i, s, m, a, [" " + m[:3], "L", ":"]) for i, (s, m, a) in enumerate(names)]
    metrics = probe_relevance(on_topic)
    assert metrics["relevance_n"] == 4 and metrics["relevance_hit_rate"] == 1.0
    assert metrics["relevance_control_rate"] == 0.0
    off_topic = [record(i, s, m, a, ["The", " is", "K"]) for i, (s, m, a) in enumerate(names)]
    assert probe_relevance(off_topic)["relevance_hit_rate"] == 0.0  # a lone letter does not count
