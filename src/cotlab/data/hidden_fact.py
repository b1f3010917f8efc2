"""Hidden fact: the self-improving recipe's draft-information check. Each question asks a yes/no about one object
("Is Maya's door open?"); the one fact that settles it ("Maya's door is closed.") is shown to the student when it
writes its draft and to the teacher, but never in the Phase A/B/C prompts, which see the question and the draft.
The question alone is a coin flip (each question text comes with either answer), so a model can beat 50% only by
reading what the draft carries, and the no-draft and shuffled-draft ablations fall to chance if it does.
"""

from __future__ import annotations

import random

from cotlab.schema import Example

# 24 names x 12 things x 2 x 2 = 1152 (question, fact) pairs: a train row repeats a test pair with p ~ 100/1152
NAMES = ("Maya", "Omar", "Lena", "Ravi", "Sofia", "Jonas", "Aiko", "Tom", "Nadia", "Pablo", "Ines", "Kofi",
         "Eva", "Hugo", "Mina", "Dev", "Zoe", "Ivan", "Lucia", "Sam", "Yara", "Felix", "Noor", "Ben")
# each thing with its two mutually exclusive states
THINGS = (("door", ("open", "closed")), ("light", ("on", "off")), ("box", ("empty", "full")),
          ("gate", ("locked", "unlocked")), ("oven", ("hot", "cold")), ("window", ("open", "closed")),
          ("cup", ("empty", "full")), ("radio", ("on", "off")), ("car", ("clean", "dirty")),
          ("tap", ("on", "off")), ("bag", ("heavy", "light")), ("road", ("wet", "dry")))


def make_example(rng: random.Random, ex_id: str) -> Example:
    name, (thing, states) = rng.choice(NAMES), rng.choice(THINGS)
    asked, actual = rng.choice(states), rng.choice(states)
    yes = asked == actual
    return Example(id=ex_id, question=f"Is {name}'s {thing} {asked}?", answer="yes" if yes else "no",
                   answer_type="yes_no", draft_context=f"{name}'s {thing} is {actual}.",
                   reasoning=f"{name}'s {thing} is {actual}, so it is {'' if yes else 'not '}{asked}.",
                   metadata={"source": "hidden_fact", "asked": asked, "actual": actual})


def generate(n_train: int, n_test: int, seed: int) -> dict[str, list[Example]]:
    """Seeded train and test splits, drawn from separate streams so n_train never changes the test set."""
    return {split: [make_example(random.Random(f"hidden_fact-{seed}-{split}-{i}"), f"hidden_fact-{split}-{i}")
                    for i in range(n)]
            for split, n in (("train", n_train), ("test", n_test))}
