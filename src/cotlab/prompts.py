"""Every prompt template: the one place training and evaluation formats come from.

A template turns an Example into a chat (user message, assistant target). Training text is
`render_prompt(...) + target + eos`; evaluation generates from `render_prompt(...)`, so the evaluation prompt
is a prefix of the training text by construction (tests/test_prompts.py checks it for every task and method).
Changing a template's wording means bumping PROMPT_VERSION: checkpoints record the version they were trained
with and evaluation refuses a mismatch.
"""

from __future__ import annotations

from typing import Sequence

from cotlab.data.schema import Example

PROMPT_VERSION = "1"

# Which template each method trains on and is evaluated with.
METHOD_TEMPLATES = {"base": "direct", "sft": "direct", "cot_distill": "cot"}

_ANSWER_HINT = {
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


def display_answer(example: Example) -> str:
    """The answer as the model should write it ("Yes", "B", "18", "Carol")."""
    if example.answer_type == "yes_no":
        return example.answer.strip().capitalize()
    return example.answer


def user_message(example: Example, template: str) -> str:
    if template not in _INSTRUCTION:
        raise ValueError(f"unknown prompt template {template!r}; expected one of {sorted(_INSTRUCTION)}")
    parts = []
    if example.context:
        parts.append(f"Facts:\n{example.context}")
    parts.append(f"Question: {example.question}")
    if example.choices:
        parts.append("Options: " + " ".join(example.choices))
    parts.append(_INSTRUCTION[template].format(hint=_ANSWER_HINT[example.answer_type]))
    return "\n".join(parts)


def target(example: Example, template: str) -> str:
    """The assistant turn a model is trained to produce (without the end-of-turn token)."""
    final = f"The answer is: {display_answer(example)}"
    if template == "cot" and example.reasoning:
        return f"{example.reasoning.strip()}\n{final}"
    return final


def _chat(tokenizer, messages: list[dict[str, str]]) -> str:
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    # Base models without a chat template: a plain, stable transcript format.
    text = "".join(f"### {m['role'].capitalize()}:\n{m['content']}\n\n" for m in messages)
    return text + "### Assistant:\n"


def end_of_turn(tokenizer) -> str:
    return tokenizer.eos_token or ""


def render_prompt(tokenizer, example: Example, template: str, shots: Sequence[Example] = ()) -> str:
    """The text a model sees before its answer; few-shot exemplars are earlier chat turns."""
    messages: list[dict[str, str]] = []
    for shot in shots:
        messages.append({"role": "user", "content": user_message(shot, template)})
        messages.append({"role": "assistant", "content": target(shot, template)})
    messages.append({"role": "user", "content": user_message(example, template)})
    return _chat(tokenizer, messages)


def render_training(tokenizer, example: Example, template: str) -> dict[str, str]:
    """Prompt-completion pair for TRL: loss is taken on the completion only."""
    return {
        "prompt": render_prompt(tokenizer, example, template),
        "completion": target(example, template) + end_of_turn(tokenizer),
    }
