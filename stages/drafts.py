"""Stage drafts@<task>: the student (the base model) drafts an answer and its questions for every train example."""
import time

from cotlab import tracking
from cotlab.data.schema import read_examples, write_json, write_jsonl
from cotlab.evaluation.extract import is_correct
from cotlab.evaluation.generate import generate
from cotlab.formats import parse_draft
from cotlab.models import load_checkpoint
from cotlab.prompts import draft_messages, render_messages
from cotlab.stage import BASE_MODEL, data_dir, drafts_dir, mlflow_params, stage_main


@stage_main("drafts")
def main(params, task):
    train = read_examples(f"{data_dir(task)}/train.jsonl")
    model, tokenizer, _ = load_checkpoint(BASE_MODEL, params.model.device)
    with tracking.stage_run(f"drafts@{task}", mlflow_params(params), task=task):
        start = time.perf_counter()
        prompts = [render_messages(tokenizer, draft_messages(ex)) for ex in train]
        generations = generate(model, tokenizer, prompts, params.drafts.max_new_tokens,
                               params.drafts.batch_size or params.sizes.eval_batch_size)
        rows, parsed, correct, answered, correct_flexible = [], 0, 0, 0, 0
        for ex, gen in zip(train, generations):
            draft = parse_draft(gen.text, ex.answer_type)
            parsed += draft.ok
            correct += draft.ok and is_correct(draft.answer, ex.answer, ex.answer_type)
            answered += draft.answer_flexible is not None
            correct_flexible += is_correct(draft.answer_flexible, ex.answer, ex.answer_type)
            rows.append({"id": ex.id, "draft": gen.text, "answer": draft.answer, "parsed": draft.ok,
                         "answer_flexible": draft.answer_flexible, "problem": draft.problem,
                         "questions": draft.questions, "truncated": gen.truncated})
        write_jsonl(f"{drafts_dir(task)}/train.jsonl", rows)
        n = len(rows)
        metrics = {"n": n, "parse_rate": round(parsed / n, 4), "unparseable": n - parsed,
                   "accuracy": round(correct / n, 4), "answer_rate_flexible": round(answered / n, 4),
                   "accuracy_flexible": round(correct_flexible / n, 4), "truncation_rate": round(sum(g.truncated for g in generations) / n, 4),
                   "runtime_s": round(time.perf_counter() - start, 2)}
        write_json(f"metrics/drafts/{task}.json", metrics)
        tracking.log_metrics(metrics)
    print(f"drafts@{task}: " + ", ".join(f"{k}={v}" for k, v in metrics.items()))


if __name__ == "__main__":
    main()
