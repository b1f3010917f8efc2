"""Synthetic multi-hop questions over a fixed universe of person-relation-person facts.

Every person has exactly one person for each relation, so "the R of P" is always defined and a k-hop
question has one answer found by following the facts. The universe depends only on the seed and the
number of people, so with no context in the prompt it can still be learned from the training split.
"""

from __future__ import annotations

import random

from cotlab.schema import Example

NAMES = [
    "Alice", "Bob", "Carol", "David", "Emma", "Frank", "Grace", "Henry", "Irene", "Jack",
    "Karen", "Liam", "Maria", "Noah", "Olivia", "Peter", "Quinn", "Rachel", "Samuel", "Tina",
    "Umar", "Vera", "Walter", "Xenia", "Yusuf", "Zoe", "Aaron", "Bella", "Caleb", "Daisy",
    "Ethan", "Fiona", "George", "Hannah", "Isaac", "Julia", "Kevin", "Laura", "Mason", "Nina",
    "Oscar", "Paula", "Ruben", "Sofia", "Thomas", "Ursula", "Victor", "Wendy", "Xavier", "Yara",
    "Zach", "Amber", "Bruno", "Chloe", "Dylan", "Elena", "Felix", "Gina", "Hugo", "Ivy",
]
RELATIONS = ["friend", "boss", "mentor", "neighbour", "sibling", "coworker", "landlord", "doctor"]

Universe = dict[tuple[str, str], str]  # (relation, person) -> the person who is that relation of them


def make_universe(n_people: int, seed: int) -> Universe:
    rng = random.Random(f"personal_relations-universe-{seed}-{n_people}")
    people = rng.sample(NAMES, n_people)
    return {(rel, p): rng.choice([q for q in people if q != p]) for p in people for rel in RELATIONS}


def fact(rel: str, person: str, other: str) -> str:
    return f"The {rel} of {person} is {other}."


def make_example(universe: Universe, start: str, chain: list[str], rng: random.Random,
                 with_context: bool, distractors: int, ex_id: str) -> Example:
    """`chain` lists relations in the order they are followed: ["boss", "mentor"] is the mentor of the boss."""
    steps, person = [], start
    for rel in chain:
        other = universe[(rel, person)]
        steps.append((rel, person, other))
        person = other
    phrase = start
    for rel in chain:
        phrase = f"the {rel} of {phrase}"
    context = ""
    if with_context:
        relevant = {(rel, p) for rel, p, _ in steps}
        others = sorted(k for k in universe if k not in relevant)
        picked = [(rel, p, universe[(rel, p)]) for rel, p in rng.sample(others, min(distractors, len(others)))]
        facts = [fact(*s) for s in steps + picked]
        rng.shuffle(facts)
        context = "\n".join(facts)
    return Example(
        id=ex_id,
        question=f"Who is {phrase}?",
        answer=person,
        answer_type="name",
        reasoning=" ".join(fact(*s) for s in steps),
        context=context,
        metadata={"source": "personal_relations", "start": start, "chain": list(chain), "hops": len(chain)},
    )


def generate(n_train: int, n_test: int, seed: int, *, universe: bool = True, hops: tuple[int, int] = (1, 3),
             n_people: int = 30, distractors: int = 6) -> dict[str, list[Example]]:
    """Distinct (start, chain) queries, test drawn first; fewer rows come back if the query space is smaller."""
    facts = make_universe(n_people, seed)
    people = sorted({p for _, p in facts})
    rng = random.Random(f"personal_relations-questions-{seed}")
    lo, hi = hops
    space = sum(len(people) * len(RELATIONS) ** k for k in range(lo, hi + 1))
    wanted = min(n_train + n_test, space)
    seen: set[tuple[str, tuple[str, ...]]] = set()
    queries = []
    # Rejection sampling keeps memory small for long chains; the attempt cap ends it when the space is nearly used up.
    for _ in range(50 * wanted + 1000):
        if len(queries) >= wanted:
            break
        q = (rng.choice(people), tuple(rng.choice(RELATIONS) for _ in range(rng.randint(lo, hi))))
        if q not in seen:
            seen.add(q)
            queries.append(q)
    split = {"test": queries[:n_test], "train": queries[n_test:n_test + n_train]}
    return {
        name: [make_example(facts, start, list(chain), rng, universe, distractors, f"personal_relations-{name}-{i}")
               for i, (start, chain) in enumerate(qs)]
        for name, qs in split.items()
    }
