"""Worked reasoning for reasoning-gym syllogisms, which ship an answer but no solution: the oracle teacher needs one.

The verdict is derived, not copied: a categorical statement over three terms is a constraint on which of the 8
Venn regions are inhabited, and the conclusion follows iff it holds in every inhabitation pattern that satisfies
both premises and leaves no term empty (existential import, as in reasoning-gym). When it does not follow, the
reasoning names a counterexample pattern.
"""

from __future__ import annotations

import itertools
import re

_STATEMENT = re.compile(r"^(All|No|Some)\s+(.+?)\s+are\s+(not\s+)?(.+?)\??$", re.IGNORECASE)


def parse_statement(text: str) -> tuple[str, str, str]:
    """("all" | "no" | "some" | "some_not", subject, predicate)."""
    m = _STATEMENT.match(text.strip())
    if not m:
        raise ValueError(f"not a categorical statement: {text!r}")
    quantifier = m.group(1).lower() + ("_not" if m.group(3) else "")
    return quantifier, m.group(2).strip().lower(), m.group(4).strip().lower()


def _holds(statement: tuple[str, str, str], regions: list[frozenset[str]]) -> bool:
    quantifier, x, y = statement
    match quantifier:
        case "all":
            return all(y in r for r in regions if x in r)
        case "no":
            return not any(x in r and y in r for r in regions)
        case "some":
            return any(x in r and y in r for r in regions)
        case "some_not":
            return any(x in r and y not in r for r in regions)
    raise ValueError(f"unknown quantifier {quantifier!r}")


def counterexample(premises: list[str], conclusion: str) -> list[frozenset[str]] | None:
    """The smallest inhabited-region pattern where the premises hold and the conclusion fails; None if it follows."""
    statements = [parse_statement(p) for p in premises]
    target = parse_statement(conclusion)
    terms = sorted({t for s in [*statements, target] for t in s[1:]})
    all_regions = [frozenset(t for t, inside in zip(terms, bits) if inside)
                   for bits in itertools.product([False, True], repeat=len(terms)) if any(bits)]
    for size in range(1, len(all_regions) + 1):
        for pattern in itertools.combinations(all_regions, size):
            regions = list(pattern)
            if (all(any(t in r for r in regions) for t in terms) and all(_holds(s, regions) for s in statements)
                    and not _holds(target, regions)):
                return regions
    return None


def _describe(region: frozenset[str], terms: list[str]) -> str:
    inside = [t for t in terms if t in region]
    outside = [t for t in terms if t not in region]
    return "something that is " + " and ".join(inside) + (f" but not {' or '.join(outside)}" if outside else "")


def reasoning(premises: list[str], conclusion: str) -> tuple[str, bool]:
    """(worked reasoning, whether the conclusion follows)."""
    lines = [f"Premise {i}: {p}." for i, p in enumerate(premises, 1)]
    found = counterexample(premises, conclusion)
    if found is None:
        lines.append(f"Every situation where both premises hold (and each group has members) also makes "
                     f"'{conclusion}' true, so it follows.")
        return "\n".join(lines), True
    terms = sorted({t for s in [*premises, conclusion] for t in parse_statement(s)[1:]})
    world = "; ".join(_describe(r, terms) for r in found)
    lines.append(f"Counterexample: suppose the only things are: {world}.")
    lines.append(f"Both premises hold there, but '{conclusion}' is false, so it does not follow.")
    return "\n".join(lines), False
