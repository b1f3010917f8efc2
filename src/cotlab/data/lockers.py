"""Lockers: Markovian CoT's mechanism check. The question lists a few lockers with random codes and asks for one;
the answer is that code. The Markovian reward prompt hides the question, so the answer's log-prob can only rise if
the CoT learns to copy the asked locker's code: a random code cannot be guessed, and nothing but the CoT carries it.
The ablation that shows the question in the reward prompt (markovian: false) needs no such CoT.
"""

from __future__ import annotations

import random

from cotlab.schema import Example

COLOURS = ("red", "blue", "green")


def make_example(rng: random.Random, colours: tuple[str, ...], digits: int, ex_id: str) -> Example:
    codes = {c: str(rng.randrange(10 ** (digits - 1), 10 ** digits)) for c in colours}
    asked = rng.choice(colours)
    listing = ", ".join(f"{c} {codes[c]}" for c in colours)
    return Example(id=ex_id, question=f"Locker codes: {listing}. What is the code of the {asked} locker?",
                   answer=codes[asked], answer_type="number",
                   reasoning=f"The {asked} locker's code is {codes[asked]}.",
                   metadata={"asked": asked, "codes": codes})


def generate(n_train: int, n_test: int, seed: int, colours: tuple[str, ...] = COLOURS,
             digits: int = 4) -> dict[str, list[Example]]:
    """Seeded train and test splits, drawn from separate streams so n_train never changes the test set."""
    return {split: [make_example(random.Random(f"lockers-{seed}-{split}-{i}"), colours, digits,
                                 f"lockers-{split}-{i}") for i in range(n)]
            for split, n in (("train", n_train), ("test", n_test))}
