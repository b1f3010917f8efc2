"""The shared prompt templates: the one place training and evaluation formats come from. Prompts that belong to
one job live beside it, so editing one re-runs only its stages: the student's draft (selfimprove/drafts.py), the
teacher's request and the oracle (teacher.py), the transplant candidates (data/candidates.py), the judge
(selfimprove/judge.py), Markovian CoT (methods/markovian.py) and transplant verification (methods/transplant.py).

A template turns an Example into a chat (user message, assistant target). Training text is
`render_prompt(...) + target + eos`; evaluation generates from `render_prompt(...)`, so the evaluation prompt
is a prefix of the training text by construction (tests/test_prompts.py checks it for every task and method).
Changing a template's wording means bumping PROMPT_VERSION: checkpoints record the version they were trained
with and evaluation refuses a mismatch.
"""

from __future__ import annotations

from typing import Sequence

from cotlab.config import ConfigError
from cotlab.schema import Example

PROMPT_VERSION = "1"

# Which template each method trains on and is evaluated with.
METHOD_TEMPLATES = {"base": "direct", "sft": "direct", "cot_distill": "cot", "dpo": "cot", "cot_sft": "cot"}


def template_for(method: str) -> str:
    if method not in METHOD_TEMPLATES:
        raise ConfigError(f"unknown method {method!r}; expected one of {sorted(METHOD_TEMPLATES)}")
    return METHOD_TEMPLATES[method]

ANSWER_HINT = {
    "number": "a number",
    "choice": "the letter of one option",
    "yes_no": "Yes or No",
    "name": "a name",
    "text": "a short phrase",
}

_INSTRUCTION = {
    "direct": "Give only the final answer, as 'The answer is: <{hint}>'.",
    "cot": "Think step by step, then finish with 'The answer is: <{hint}>'.",
}


# Where generation stops (cotlab.evaluation.generate matches these on each row's new text): at the end of the line
# that completes the template's format. The instructions ask the model to *finish* with "The answer is: X", so
# anything after that line is not part of the answer; a 135M model otherwise often rambles on to the token cap
# (53-63% of StrategyQA Phase B/C outputs did at 128 tokens). Each pattern ends with a newline.
ANSWER_LINE_STOP = r"(?i)\bthe answer is\b:?\s*\**[^\W_][^\n]*\n"
FIRST_LINE_STOP = r"[^\W_][^\n]*\n"  # after a prefilled "The answer is:", the value's line
TEMPLATE_STOPS = {"direct": ANSWER_LINE_STOP, "cot": ANSWER_LINE_STOP}


def display_answer(example: Example) -> str:
    """The answer as the model should write it ("Yes", "B", "18", "Carol")."""
    if example.answer_type == "yes_no":
        return example.answer.strip().capitalize()
    return example.answer


def question_block(example: Example, draft_facts: bool = False) -> str:
    """Facts (if any), the question and the options: what every prompt about an example starts with. The facts
    kept for the drafter and the teacher (`draft_context`) join only when `draft_facts` is set."""
    parts = []
    facts = "\n".join(f for f in (example.context, example.draft_context if draft_facts else "") if f)
    if facts:
        parts.append(f"Facts:\n{facts}")
    parts.append(f"Question: {example.question}")
    if example.choices:
        parts.append("Options: " + " ".join(example.choices))
    return "\n".join(parts)


def user_message(example: Example, template: str, draft: str | None = None) -> str:
    """The question block, the student's draft when given (Phase B/C prompts: question + "Student draft: "),
    then the template's instruction."""
    if template not in _INSTRUCTION:
        raise ValueError(f"unknown prompt template {template!r}; expected one of {sorted(_INSTRUCTION)}")
    parts = [question_block(example)]
    if draft is not None:
        parts.append(f"Student draft: {' '.join(draft.split()) or '(empty)'}")
    parts.append(_INSTRUCTION[template].format(hint=ANSWER_HINT[example.answer_type]))
    return "\n".join(parts)


def target(example: Example, template: str) -> str:
    """The assistant turn a model is trained to produce (without the end-of-turn token)."""
    final = f"The answer is: {display_answer(example)}"
    if template == "cot" and example.reasoning:
        return f"{example.reasoning.strip()}\n{final}"
    return final


def render_messages(tokenizer, messages: list[dict[str, str]]) -> str:
    """A chat rendered for generation: the model's chat template, or a plain transcript for base models."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    # Base models without a chat template: a plain, stable transcript format.
    text = "".join(f"### {m['role'].capitalize()}:\n{m['content']}\n\n" for m in messages)
    return text + "### Assistant:\n"


def end_of_turn(tokenizer) -> str:
    return tokenizer.eos_token or ""


def render_prompt(tokenizer, example: Example, template: str, shots: Sequence[Example] = (),
                  draft: str | None = None) -> str:
    """The text a model sees before its answer; few-shot exemplars are earlier chat turns."""
    messages: list[dict[str, str]] = []
    for shot in shots:
        messages.append({"role": "user", "content": user_message(shot, template)})
        messages.append({"role": "assistant", "content": target(shot, template)})
    messages.append({"role": "user", "content": user_message(example, template, draft)})
    return render_messages(tokenizer, messages)


def render_training(tokenizer, example: Example, template: str, draft: str | None = None) -> dict[str, str]:
    """Prompt-completion pair for TRL: loss is taken on the completion only."""
    return {
        "prompt": render_prompt(tokenizer, example, template, draft=draft),
        "completion": target(example, template) + end_of_turn(tokenizer),
    }
