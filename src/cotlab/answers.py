"""Answer extraction and normalisation for model outputs.

Two modes: ``strict`` only trusts explicit answer anchors ("The answer is: X",
"#### X", "Answer: X"); the flexible default falls back to per-type heuristics.
Every public function is total: bad input gives ``None``/``False``, never an error,
because one weird generation must not kill a whole evaluation run.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from fractions import Fraction

__all__ = ["extract_answer", "normalize_answer", "is_correct", "ANSWER_TYPES"]

ANSWER_TYPES = frozenset({"number", "choice", "yes_no", "name", "text"})

# Anchor only (value is read separately) so that several anchors on one line all count.
_ANCHOR_RE = re.compile(r"#{4}|\b(?:final\s+)?answer(?:\s+is\b\s*:?|\s*:)", re.IGNORECASE)

# Lookbehind stops us from starting inside another number ("3-4" gives 3 and 4, not -4).
_NUM_RE = re.compile(
    r"(?<![\d.])(?P<sign>-)?\$?\s?"
    r"(?P<num>(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?|\.\d+)"
)

_YES_NO = {"yes": "yes", "no": "no", "true": "yes", "false": "no"}
_YES_NO_RE = re.compile(r"\b(yes|no|true|false)\b", re.IGNORECASE)

# Choice letters: "(F)" is explicit enough to allow letters past E; bare forms stay
# within A-E so that prose ("A cat sat") is not read as option A.
_CHOICE_FALLBACK_RE = re.compile(
    r"\(([A-J])\)"
    r"|\b([A-E])\)"
    r"|\b(?i:option|choice|answer)(?:\s+is)?\s*:?\s*\(?(?:([B-E])|(A)(?!\s+[a-z]))\b(?![’'])"
)

_NAME_STOPWORDS = frozenset(
    "The A An It He She They We I This That There Not No Yes True False Answer So Therefore".split()
)
_NAME_PARTICLES = frozenset("da de del der di du la le van von bin al".split())
_NAME_AFTER_IS_RE = re.compile(r"(?:\bis\b:?|=)[ \t]*\**[ \t]*([A-Z][a-z]+(?:[ -][A-Z][a-z]+)*)")


def _clean(value: str) -> str:
    """Strip markdown emphasis, quotes and surrounding whitespace."""
    value = value.replace("**", "").replace("__", "")
    return value.strip().strip("`\"'“”‘’").strip()


def _format_number(sign: str | None, num: str) -> str | None:
    num = num.replace(",", "")
    try:
        if "/" in num:
            frac = Fraction(num)  # ZeroDivisionError on x/0 is caught by the caller
            if sign:
                frac = -frac
            den = frac.denominator
            for p in (2, 5):
                while den % p == 0:
                    den //= p
            # Only exact, short decimals are worth converting; 1/3 stays a fraction.
            if den != 1 or frac.denominator > 10**6:
                return f"{frac.numerator}/{frac.denominator}"
            dec = Decimal(frac.numerator) / Decimal(frac.denominator)
        else:
            dec = Decimal(num)
            if sign:
                dec = -dec
    except (InvalidOperation, ValueError, ZeroDivisionError):
        return None
    text = format(dec, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _normalize_number(value: str, last: bool = False) -> str | None:
    matches = list(_NUM_RE.finditer(value))
    for m in reversed(matches) if last else matches:
        out = _format_number(m.group("sign"), m.group("num"))
        if out is not None:
            return out
    return None


def _normalize_choice(value: str) -> str | None:
    value = _clean(value)
    m = (
        re.match(r"\(([A-Za-z])\)", value)
        or re.match(r"(?i:option|choice)\s+\(?([A-Za-z])\b", value)
        or re.fullmatch(r"([A-Za-z])[.:)]?", value)
        or re.match(r"([A-E])[.:)]", value)
        # "A" followed by a lowercase word is the article, not an option.
        or re.match(r"([B-E])\b|(A)\b(?!\s+[a-z])", value)
    )
    if not m:
        return None
    return next(g for g in m.groups() if g).upper()


def _normalize_yes_no(value: str) -> str | None:
    m = re.match(r"\W*(yes|no|true|false)\b", _clean(value), re.IGNORECASE)
    return _YES_NO[m.group(1).lower()] if m else None


# Contraction/possessive tails stay lower-case ("Carol's"); other apostrophes capitalise ("O'Neil").
_NAME_WORD_RE = re.compile(r"[^\W\d_]+")


def _capitalize_word(m: re.Match) -> str:
    word = m.group(0)
    return word.lower() if m.start() and m.string[m.start() - 1] in "'’" and len(word) <= 2 else word.capitalize()


def _normalize_name(value: str) -> str | None:
    value = re.sub(r"\s+", " ", _clean(value)).strip(" .,;:!?")
    if not value or not re.search(r"[^\W\d_]", value):
        return None
    return _NAME_WORD_RE.sub(_capitalize_word, value)


def _normalize_text(value: str) -> str | None:
    value = re.sub(r"\s+", " ", _clean(value)).lower().rstrip(".").strip()
    return value or None


_NORMALIZERS = {
    "number": _normalize_number,
    "choice": _normalize_choice,
    "yes_no": _normalize_yes_no,
    "name": _normalize_name,
    "text": _normalize_text,
}


def normalize_answer(value: str, answer_type: str) -> str | None:
    """Normalise a gold (or extracted) answer string; ``None`` if it does not parse."""
    if not isinstance(value, str) or answer_type not in _NORMALIZERS:
        return None
    try:
        return _NORMALIZERS[answer_type](value)
    except Exception:  # never let a pathological string escape
        return None


def _trim_name_value(value: str) -> str:
    """Cut an anchored name value down to the name itself ("Carol, because ..." -> "Carol")."""
    value = re.split(r"[,.;!?()\[\]]", _clean(value), maxsplit=1)[0]
    words = value.split()
    if not words:
        return ""
    if words[0][:1].isupper():
        kept = [words[0]]
        for w in words[1:]:
            if not (w[:1].isupper() or w in _NAME_PARTICLES):
                break
            kept.append(w)
        return " ".join(kept)
    # All-lowercase answers ("carol smith") are only trusted when short.
    return value if len(words) <= 3 else words[0]


_MAX_ANCHORS = 50  # only the last few anchors can matter; bounds work on degenerate text
_MAX_VALUE_CHARS = 500  # answers are short; windowing keeps many-anchor texts linear


def _anchored_values(text: str) -> list[str]:
    ends = [m.end() for m in _ANCHOR_RE.finditer(text)][-_MAX_ANCHORS:]
    values = []
    for end in ends:
        window = text[end:end + _MAX_VALUE_CHARS]
        line, _, after = window.partition("\n")
        if not _clean(line):
            # "The answer is:\n42" - the value sits on the next non-empty line.
            line = next((ln for ln in after.split("\n") if ln.strip()), "")
        values.append(line)
    return values


def _fallback(text: str, answer_type: str) -> str | None:
    if answer_type == "number":
        return _normalize_number(text, last=True)
    if answer_type == "yes_no":
        found = _YES_NO_RE.findall(text)
        return _YES_NO[found[-1].lower()] if found else None
    if answer_type == "choice":
        found = _CHOICE_FALLBACK_RE.findall(text)
        return next(g for g in found[-1] if g) if found else None
    if answer_type == "name":
        for cand in reversed(_NAME_AFTER_IS_RE.findall(text)):
            if re.split(r"[ -]", cand)[0] not in _NAME_STOPWORDS:
                return _normalize_name(cand)
        return None
    if answer_type == "text":
        first = next((ln for ln in text.split("\n") if ln.strip()), "")
        return _normalize_text(first)
    return None


def extract_answer(text: str, answer_type: str, strict: bool = False) -> str | None:
    """Extract and normalise the answer of ``answer_type`` from a model output.

    The last anchor whose value parses wins (models often restate or correct
    themselves); anchors with unparseable values ("The answer is: unclear") are
    skipped. Flexible mode falls back to type-specific heuristics.
    """
    if not isinstance(text, str) or answer_type not in _NORMALIZERS:
        return None
    try:
        for value in reversed(_anchored_values(text)):
            if answer_type == "name":
                value = _trim_name_value(value)
            out = normalize_answer(value, answer_type)
            if out is not None:
                return out
        return None if strict else _fallback(text, answer_type)
    except Exception:  # never let a pathological string escape
        return None


def is_correct(pred: str | None, gold: str, answer_type: str) -> bool:
    """Compare a (normalised) prediction with a gold answer.

    Numbers are compared as exact fractions with tolerance 1e-6 (relative for
    |gold| > 1); other types compare normalised strings.
    """
    try:
        p = normalize_answer(pred, answer_type) if isinstance(pred, str) else None
        g = normalize_answer(gold, answer_type) if isinstance(gold, str) else None
        if p is None or g is None:
            return False
        if answer_type == "number":
            pf, gf = Fraction(p), Fraction(g)
            return abs(pf - gf) <= Fraction(1, 10**6) * max(1, abs(gf))
        return p == g
    except Exception:
        return False
