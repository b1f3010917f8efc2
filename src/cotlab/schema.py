"""The one example schema every source produces, and JSONL I/O that names the file and row on bad input."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

ANSWER_TYPES = ("number", "choice", "yes_no", "name", "text")


class DataError(ValueError):
    """Missing, malformed or empty data; the message names the file, row or split."""


@dataclass
class Example:
    id: str
    question: str
    answer: str
    answer_type: str
    choices: list[str] = field(default_factory=list)
    reasoning: str = ""
    context: str = ""
    # facts only the student's draft prompt and the teacher see (a draft-information task: the Phase A/B/C prompts
    # show the question and the draft, so the draft is what carries them)
    draft_context: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    weight: float = 1.0  # training weight (filter's `rebalance: weights`); training samples rows in proportion

    def __post_init__(self) -> None:
        if self.answer_type not in ANSWER_TYPES:
            raise DataError(f"example {self.id!r}: answer_type {self.answer_type!r} is not one of {ANSWER_TYPES}")
        if not str(self.question).strip():
            raise DataError(f"example {self.id!r}: empty question")
        self.answer = str(self.answer)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> "Example":
        known = {k: row[k] for k in cls.__dataclass_fields__ if k in row}
        missing = [k for k in ("id", "question", "answer", "answer_type") if k not in row]
        if missing:
            raise DataError(f"missing field(s) {missing}")
        return cls(**known)


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of a JSONL file; a bad row raises DataError naming the file and the 1-based row number."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    rows = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: row {lineno} is not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}: row {lineno} is a JSON {type(row).__name__}, expected an object")
            rows.append(row)
    return rows


def read_examples(path: str | os.PathLike) -> list[Example]:
    examples = []
    for lineno, row in enumerate(read_jsonl(path), start=1):
        try:
            examples.append(Example.from_dict(row))
        except (DataError, TypeError) as e:
            raise DataError(f"{path}: row {lineno}: {e}") from None
    return examples


def _write_atomically(path: str | os.PathLike, write: Callable[[Any], None]) -> None:
    """Write to a temporary file in the same folder, then rename: a crash never leaves a truncated file that
    looks complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.chmod(tmp, 0o644)  # mkstemp's 0600 would make outputs unreadable to other users of a shared cache
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict[str, Any] | Example]) -> None:
    def write(f) -> None:
        for row in rows:
            f.write(json.dumps(row.to_dict() if isinstance(row, Example) else row, ensure_ascii=False) + "\n")

    _write_atomically(path, write)


def write_csv(path: str | os.PathLike, rows: list[dict[str, Any]]) -> None:
    """Rows (a loss curve, a monitor per step) as CSV with the first row's keys as header, for `dvc plots`."""
    import csv

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["step", "epoch", "loss"])
        writer.writeheader()
        writer.writerows(rows)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    def write(f) -> None:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")

    _write_atomically(path, write)
