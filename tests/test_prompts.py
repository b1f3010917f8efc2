"""For every task and method the evaluation prompt is a prefix of the training text."""
import pytest

from cotlab.config import load_params
from cotlab.data.sources import load_task
from cotlab.evaluation.run import pick_shots
from cotlab.prompts import METHOD_TEMPLATES, render_prompt, render_training

# Every offline task of params.yaml (hub specs such as gsm8k_aug need the network: tests never do).
TASKS = sorted((t, s) for t, s in load_params("params.yaml").task_specs.items() if s["source"] != "hub")


@pytest.mark.parametrize("task, spec", TASKS, ids=[t for t, _ in TASKS])
@pytest.mark.parametrize("method", ["sft", "cot_distill"])
def test_eval_prompt_is_prefix_of_training_text(task, spec, method, tokenizer):
    splits = load_task(task, spec, 6, 4, seed=0)
    template = METHOD_TEMPLATES[method]
    for ex in splits["train"]:
        pair = render_training(tokenizer, ex, template)
        text = pair["prompt"] + pair["completion"]
        assert text.startswith(render_prompt(tokenizer, ex, template))
        # token level too: the prompt tokens are a prefix of the training tokens
        prompt_ids = tokenizer(render_prompt(tokenizer, ex, template), add_special_tokens=False)["input_ids"]
        text_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert text_ids[: len(prompt_ids)] == prompt_ids
        assert pair["completion"].endswith(tokenizer.eos_token)
        assert "The answer is: " in pair["completion"]


def test_cot_target_holds_the_reasoning_and_few_shot_turns_precede_the_question(tokenizer):
    splits = load_task("gsm8k", {"source": "gsm8k"}, 6, 2, seed=0)
    ex = splits["test"][0]
    completion = render_training(tokenizer, splits["train"][0], "cot")["completion"]
    assert splits["train"][0].reasoning.split("\n")[0] in completion
    shots = pick_shots(splits["train"], 2, seed=0)
    prompt = render_prompt(tokenizer, ex, "direct", shots)
    assert prompt.index(shots[0].question) < prompt.index(shots[1].question) < prompt.index(ex.question)
    assert prompt.endswith("<|im_start|>assistant\n")
    assert prompt.count("The answer is: ") == 2 * 2 + 1  # each exemplar: instruction + answer; then the question


@pytest.mark.parametrize("task", ["strategyqa", "gsm8k", "aqua", "personal_relations", "syllogism"])
def test_the_draft_prompt_shows_one_exemplar_of_the_same_answer_type_in_the_draft_format(task):
    """The exemplar turn is itself a well-formed draft (answer, reason, two questions) of the task's answer type,
    and the last turn asks about the task's own question."""
    from cotlab.formats import parse_draft
    from cotlab.selfimprove.drafts import draft_messages

    example = load_task(task, dict(TASKS)[task], 2, 1, seed=0)["test"][0]
    user_shot, assistant_shot, user = draft_messages(example)
    assert [m["role"] for m in (user_shot, assistant_shot, user)] == ["user", "assistant", "user"]
    shot = parse_draft(assistant_shot["content"], example.answer_type)
    assert shot.ok and shot.reason and len(shot.questions) == 2
    assert example.question in user["content"] and example.question not in user_shot["content"]
    assert user["content"].split("\n")[-3:] == user_shot["content"].split("\n")[-3:]
