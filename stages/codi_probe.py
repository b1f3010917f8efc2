"""Stage codi_probe@<task>: what the continuous thoughts carry. For a seeded sample of test questions, the state each
thought is projected from, read through the LM head as its top-k tokens, next to the gold answer and the reasoning
the thoughts replace: reports/codi_probe/<task>/probe.md (readable) and probe.jsonl."""
import random
from pathlib import Path

from cotlab.schema import read_examples, write_jsonl
from cotlab.methods import codi
from cotlab.stage import codi_data_dir, model_dir, stage_main


@stage_main("codi_probe")
def main(params, task):
    cfg = params.codi
    test = read_examples(f"{codi_data_dir(task)}/test.jsonl")
    sample = random.Random(f"{params.seed}-codi-probe").sample(test, min(cfg.probe_questions, len(test)))
    model, tokenizer, manifest = codi.load(model_dir("codi", task), params.model.device)
    answers = codi.predict(model, tokenizer, sample, manifest["token_ids"], cfg.max_new_tokens, len(sample))
    rows, lines = [], [f"# CODI probe: {task}", "",
                       f"Each continuous thought's source state read through the LM head (top {cfg.probe_top_k} "
                       f"tokens, probability), {model.codi_config.inf_latent_iterations} thoughts per question.", ""]
    for ex, answer in zip(sample, answers):
        thoughts = codi.probe(model, tokenizer, ex, manifest["token_ids"], cfg.probe_top_k)
        decoded = answer.text
        rows.append({"id": ex.id, "question": ex.question, "gold": ex.answer, "output": decoded, "thoughts": thoughts})
        lines += [f"## {ex.id}", "", f"**Question:** {ex.question}", "", f"**Gold:** {ex.answer} | "
                  f"**CODI:** {decoded.strip()!r}", "", f"**Reasoning replaced:** {ex.reasoning}", "",
                  "| thought | top tokens |", "|---|---|"]
        lines += [f"| {t['thought']} | " + ", ".join(f"`{tok!r}` {p:.2f}" for tok, p in zip(t["tokens"], t["probs"]))
                  + " |" for t in thoughts]
        lines.append("")
    write_jsonl(f"reports/codi_probe/{task}/probe.jsonl", rows)
    Path(f"reports/codi_probe/{task}/probe.md").write_text("\n".join(lines))
    print("\n".join(lines[:40]))


if __name__ == "__main__":
    main()
