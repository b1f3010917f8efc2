"""Every prompt template: the one place training and evaluation formats come from.

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


# Where generation stops (cotlab.evaluation.generate matches these on each row's new text): at the end of the line
# that completes the template's format. The instructions ask the model to *finish* with "The answer is: X", so
# anything after that line is not part of the answer; a 135M model otherwise often rambles on to the token cap
# (53-63% of StrategyQA Phase B/C outputs did at 128 tokens). Each pattern ends with a newline.
ANSWER_LINE_STOP = r"(?i)\bthe answer is\b:?\s*\**[^\W_][^\n]*\n"
FIRST_LINE_STOP = r"[^\W_][^\n]*\n"  # after a prefilled "The answer is:", the value's line
DRAFT_STOP = r"Questions:[^\n]*\?[^\n]*\n"  # the draft's last line: its clarifying questions
TEMPLATE_STOPS = {"direct": ANSWER_LINE_STOP, "cot": ANSWER_LINE_STOP}


def display_answer(example: Example) -> str:
    """The answer as the model should write it ("Yes", "B", "18", "Carol")."""
    if example.answer_type == "yes_no":
        return example.answer.strip().capitalize()
    return example.answer


def question_block(example: Example) -> str:
    """Facts (if any), the question and the options: what every prompt about an example starts with."""
    parts = []
    if example.context:
        parts.append(f"Facts:\n{example.context}")
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
    parts.append(_INSTRUCTION[template].format(hint=_ANSWER_HINT[example.answer_type]))
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


# ---------------------------------------------------------------- data generation (drafts, teacher, candidates)
# These prompts produce data, not model inputs at train/eval time; cotlab.formats parses what comes back.

# One worked draft per answer type, shown as an earlier chat turn. Without it SmolLM2-135M kept the draft format
# in 0-38% of questions and wrote clarifying questions in none (48 tokens, StrategyQA and syllogism); with it,
# ~100% and ~95% (a 20-question check per task). The exemplars are off-topic for every shipped task on purpose.
_DRAFT_EXEMPLARS = {
    "yes_no": ("Can a goldfish live for a week out of water?",
               "No - fish need water to breathe.",
               "How long can a goldfish breathe air? Would a damp tank count as out of water?"),
    "number": ("A box holds 12 pencils. How many pencils are in 3 boxes?",
               "36 - 3 boxes of 12 pencils is 3 x 12.",
               "Does every box hold exactly 12 pencils? Are any pencils outside the boxes?"),
    "choice": ("Which animal is a mammal?\nOptions: A) trout B) whale C) eagle",
               "B - whales breathe air and feed their young milk.",
               "Which options breathe air? Does any option lay eggs?"),
    "name": ("Ann is Bob's mother and Cara is Bob's sister. Who is Cara's mother?",
             "Ann - siblings share their mother.",
             "Are Bob and Cara full siblings? Could Cara have a different mother?"),
    "text": ("What colour is a ripe banana?",
             "yellow - bananas turn yellow as they ripen.",
             "Which variety of banana is meant? Is ripe the same as overripe?"),
}


def _draft_request(question_block_text: str, answer_type: str) -> str:
    return (f"{question_block_text}\n"
            "Write a quick draft in exactly this format:\n"
            f"Answer: <{_ANSWER_HINT[answer_type]}> - <brief reasoning>\n"
            "Questions: <a focused sub-question>? <your key uncertainty>?")


def draft_messages(example: Example) -> list[dict[str, str]]:
    """The student's draft: a quick answer with a reason, and the questions it would ask a teacher; one worked
    exemplar of the same answer type comes first."""
    question, answer, questions = _DRAFT_EXEMPLARS[example.answer_type]
    return [
        {"role": "user", "content": _draft_request(f"Question: {question}", example.answer_type)},
        {"role": "assistant", "content": f"Answer: {answer}\nQuestions: {questions}"},
        {"role": "user", "content": _draft_request(question_block(example), example.answer_type)},
    ]


TEACHER_SYSTEM = "You are a patient teacher. You check a student's draft and then solve the problem carefully."


def teacher_messages(example: Example, draft: str) -> list[dict[str, str]]:
    hint = _ANSWER_HINT[example.answer_type]
    return [
        {"role": "system", "content": TEACHER_SYSTEM},
        {"role": "user", "content": (
            f"{question_block(example)}\n\n"
            f"Student draft:\n{draft.strip() or '(no draft)'}\n\n"
            "Reply in exactly this format:\n"
            "Teaching Analysis: <what the draft gets right or wrong, in one or two sentences>\n"
            "Step-by-Step Reasoning:\n1. <first step>\n2. <next step>\n...\n"
            f"Final Assessment: the answer is: **<{hint}>**"
        )},
    ]


def candidates_messages(example: Example, correct: str, argued: str) -> list[dict[str, str]]:
    """Two explained answers (one with a single arithmetic slip) and an argument for the candidate `argued`."""
    wrong = "B" if correct == "A" else "A"
    return [
        {"role": "system", "content": "You write worked solutions to math word problems."},
        {"role": "user", "content": (
            f"{question_block(example)}\n\n"
            f"Write Candidate {correct} as a correct step-by-step solution, and Candidate {wrong} as the same "
            "solution with exactly one arithmetic mistake carried through to a wrong final answer. End each "
            "candidate with 'The answer is: <number>'. Then write an Argument of two or three sentences that "
            f"Candidate {argued} is correct, ending with 'Therefore, Candidate {argued} is correct.'\n"
            "Format:\nCandidate A:\n<solution>\nCandidate B:\n<solution>\nArgument:\n<argument>"
        )},
    ]


JUDGE_SYSTEM = "You are a strict judge of study questions. You reply with one letter."


def judge_messages(example: Example, questions_a: str, questions_b: str) -> list[dict[str, str]]:
    """Which of two students' clarifying questions would help more to answer the question correctly."""
    return [
        {"role": "system", "content": JUDGE_SYSTEM},
        {"role": "user", "content": (
            f"{question_block(example)}\n\n"
            "Before answering, two students wrote the questions they would ask a teacher.\n"
            f"Student A: {questions_a}\nStudent B: {questions_b}\n\n"
            "Whose questions are more focused and more useful for answering correctly? Reply with A or B only."
        )},
    ]


# ---------------------------------------------------------------- Markovian CoT (methods/markovian.py)
# Plain text, no chat turns, as in the reference code. The CoT is sampled after "Reasoning:" from the question; the
# answer is scored (training) and decoded (evaluation) after the same CoT tokens and " Answer:", with the question
# replaced by REDACTED in Markovian mode, so the CoT alone must carry what the answer needs.
REDACTED = "<Redacted>"
MARKOVIAN_ANSWER_CUE = " Answer:"
_MARKOVIAN_INSTRUCTION = {
    "number": "You will be given a problem, which you have {length} tokens to work through step-by-step.",
    "choice": "Use {length} tokens to think step-by-step, then select the letter of the correct option.",
    "yes_no": "Use {length} tokens to think step-by-step, then answer Yes or No.",
    "name": "Use {length} tokens to think step-by-step, then give the name asked for.",
    "text": "Compress your understanding of this text into {length} tokens, then predict how it continues.",
}


def markovian_prefix(example: Example, cot_length: int, show_question: bool = True) -> str:
    """What comes before the CoT: the instruction, the question (or REDACTED) and "Reasoning:". With the question it
    is the prompt the CoT is sampled from; without it, the start of the Markovian answer prompt."""
    instruction = _MARKOVIAN_INSTRUCTION[example.answer_type].format(length=cot_length)
    question = question_block(example) if show_question else f"Question: {REDACTED}"
    return f"{instruction}\n{question}\nReasoning:"


def markovian_gold(example: Example) -> str:
    """The answer as scored after MARKOVIAN_ANSWER_CUE (its own leading space: tokenised apart from the cue)."""
    return " " + display_answer(example)


# ---------------------------------------------------------------- transplant verification (methods/transplant.py)
# Chat turns with a slot where each explanation goes: methods/transplant.py splices the explanation's token ids into
# the slot, so that pass 1 (solving) and pass 2 (choosing) hold it as the same token sequence.
TRANSPLANT_CUE = "Candidate"  # the start of the answer turn in pass 2: the next token is the candidate's identifier


def explanation_slot(label: str) -> str:
    return f"[[explanation {label}]]"


def transplant_solve_messages(question: str) -> list[dict[str, str]]:
    """Pass 1: the question, answered by the explanation (spliced in after the rendered prompt)."""
    return [{"role": "user", "content": f"Solve this problem step by step.\n\nQuestion: {question}"}]


def transplant_choice_messages(question: str, argument: str, labels: Sequence[str] = ("A", "B")) -> list[dict[str, str]]:
    """Pass 2: the question, both explanations (slots), the argument and the choice."""
    candidates = "\n\n".join(f"Candidate {label}:\n{explanation_slot(label)}" for label in labels)
    return [{"role": "user", "content": (
        f"Question: {question}\n\n{candidates}\n\nArgument:\n{argument}\n\n"
        f"Which candidate is correct? Reply with {' or '.join(labels)}."
    )}]
