"""Turn every data source (vendored benchmarks, reasoning_gym, the personal_relations and lockers generators, the HF hub,
local files) into train/test lists of `Example`.

`load_task` is the only entry point the pipeline needs; the row mappers are public so they can be tested on
hand-made rows without the network.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import random
import re
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Callable

from cotlab.config import ConfigError
from cotlab.data import hidden_fact, lockers, personal_relations, syllogism
from cotlab.schema import ANSWER_TYPES, DataError, Example, read_jsonl

BENCHMARKS = Path(__file__).parent / "benchmarks"
LETTERS = "ABCDEFGHIJ"
# Generators have no natural size; these apply when n_train / n_test is None.
GENERATED_DEFAULT = {"train": 1000, "test": 200}
RG_DATASETS = {"gsm_symbolic": "number", "basic_arithmetic": "number", "chain_sum": "number", "syllogism": "yes_no",
               "family_relationships": "text"}


# ---------------------------------------------------------------- helpers

def normalize_number(text: Any) -> str | None:
    """'$1,234.50' -> '1234.5', '18.00' -> '18', '-3' -> '-3'; None when it is not a number."""
    s = re.sub(r"[\s$,]", "", str(text))
    try:
        d = Decimal(s)
    except InvalidOperation:
        return None
    if not d.is_finite():
        return None
    out = format(d.normalize(), "f")  # 'f' undoes the exponent normalize() gives to round numbers (1E+2)
    return "0" if out == "-0" else out


def normalize_question(text: str) -> str:
    return " ".join(re.findall(r"\w+", text.lower()))


def _rng(seed: int, *purpose: str) -> random.Random:
    return random.Random("-".join([str(seed), *purpose]))


def _derived_seed(seed: int, purpose: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}-{purpose}".encode()).digest()[:4], "big")


def seeded_split(examples: list[Example], test_fraction: float, seed: int,
                 stratify: Callable[[Example], Any] | None = None) -> tuple[list[Example], list[Example]]:
    """Shuffle within each stratum and send round(fraction * size) of it to test, so class shares are kept."""
    groups: dict[Any, list[int]] = {}
    for i, ex in enumerate(examples):
        groups.setdefault(stratify(ex) if stratify else None, []).append(i)
    rng = _rng(seed, "split")
    test_idx: set[int] = set()
    for key in sorted(groups, key=str):
        group = groups[key][:]
        rng.shuffle(group)
        test_idx.update(group[:round(len(group) * test_fraction)])
    # Both halves keep source order: stable, readable files.
    return ([ex for i, ex in enumerate(examples) if i not in test_idx],
            [ex for i, ex in enumerate(examples) if i in test_idx])


def _number_answer(value: Any, where: str) -> str:
    out = normalize_number(value)
    if out is None:
        raise DataError(f"{where}: answer {value!r} is not a number")
    return out


def _letter(label: Any) -> str:
    label = str(label).strip()
    return LETTERS[int(label) - 1] if label.isdigit() else label.upper()  # ARC mixes '1'..'4' with 'A'..'D'


# ---------------------------------------------------------------- row mappers (shared by vendored and hub)

def gsm8k_row(row: dict, ex_id: str) -> Example:
    solution, _, final = row["answer"].rpartition("####")
    reasoning = re.sub(r"<<[^>]*>>", "", solution).strip()
    return Example(id=ex_id, question=row["question"].strip(), answer=_number_answer(final, ex_id),
                   answer_type="number", reasoning=reasoning,
                   # With its calculator annotations (<<48/2=24>>): the steps the candidates oracle can break.
                   metadata={"source": "gsm8k", "solution": solution.strip()})


# zen-E/GSM8k-Aug's row options (task_specs.<task>.<key> with dataset gsm8k_aug), first value the default: cotlab's
# earlier form. The reference's (zhenyi4/codi 4fd88d4, train.py L235, L263-287; scripts/train_llama1b_gsm8k-aug.sh L43)
# is annotations keep, max_token_num 200, question_format raw: what the CODI preset sets (cotlab.presets).
GSM8K_AUG_CHOICES = {"annotations": ("strip", "keep"), "question_format": ("labelled", "raw")}


def gsm8k_aug_row(row: dict, ex_id: str, train: bool | None = None, include_last_cot: bool = False,
                  annotations: str = "strip", max_token_num: int | None = None,
                  question_format: str = "labelled") -> Example | None:
    """zen-E/GSM8k-Aug (CODI's training data): the CoT is calculator steps only ("<<600*30/100=180>> <<...>>").
    Training rows get the reference's preprocessing (zhenyi4/codi train.py L270-281): the CoT loses its last
    space-separated step, the one computing the answer (unless `include_last_cot`), and a row whose answer does not
    start with a digit (a negative one) is skipped (None). Test rows stay whole, as the reference evaluates on GSM8k's
    test split unfiltered (test.py L125-126). `train` None: read from the id _hub gives, "gsm8k_aug-<split>-<i>", true
    for a split named train*.

    annotations: keep = the steps as the reference feeds them, << >> included (train.py L270, L286); strip = the
    calculator steps without their brackets. max_token_num: the reference's length filter (train.py L264-267): a
    training row whose question + cot + answer fields, concatenated as given, encode to more tokens than this is dropped
    (200 in the Llama script; src/model.py L117's default 1000 for GPT-2's); counting needs the model's tokenizer, so
    the row carries the limit and that text and CODI's training applies it (cotlab.methods.codi.within_max_token_num);
    None = no filter. question_format: raw = the reference's sequence, the question as given, then CoT and answer
    (its number as the row writes it, "1,080"), tokenised apart with nothing added between (train.py L235, L277-287,
    preprocess L175-189); labelled = cotlab's prompt block ("Question: ...") and a newline after it and after the
    CoT, and the answer as scoring reads it ("1080"; cotlab.methods.codi.encode)."""
    for key, value in (("annotations", annotations), ("question_format", question_format)):
        if value not in GSM8K_AUG_CHOICES[key]:
            raise ValueError(f"gsm8k_aug {key} {value!r}: expected one of {GSM8K_AUG_CHOICES[key]}")
    if train is None:
        parts = ex_id.split("-")
        train = len(parts) > 2 and parts[1].startswith("train")
    last_word = str(row["answer"]).split(" ")[-1]
    if train and not last_word[:1].isdigit():  # "some answers start with the negative sign" (train.py L279)
        return None
    cot = row["cot"] if include_last_cot or not train else " ".join(row["cot"].split(" ")[:-1])
    if annotations == "strip":
        steps = re.findall(r"<<([^>]*)>>", cot)
        calculator = re.search(r"<<[^>]*>>", row["cot"]) is not None  # a one-step CoT left empty stays empty
        cot = " ".join(steps) if calculator else cot.strip()
    metadata = {"source": "gsm8k_aug", "solution": row["cot"].strip(), "question_format": question_format}
    if question_format == "raw":  # the answer as the reference writes it after "The answer is: " (train.py L283-284)
        metadata["answer_text"] = last_word.replace("####", "")
    if train and max_token_num is not None:
        metadata.update(max_token_num=max_token_num,
                        max_token_num_text=row["question"] + row["cot"] + str(row["answer"]))  # train.py L265
    return Example(id=ex_id, question=row["question"] if question_format == "raw" else row["question"].strip(),
                   answer=_number_answer(row["answer"], ex_id), answer_type="number", reasoning=cot, metadata=metadata)


def _as_list(value: Any) -> list[str]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return [value] if value.strip() else []
    return [str(v) for v in (value or [])]


def strategyqa_row(row: dict, ex_id: str) -> Example:
    answer = row["answer"]
    if isinstance(answer, str):
        answer = answer.strip().lower() in ("true", "yes")
    facts = " ".join(f if f.rstrip().endswith((".", "!", "?")) else f.rstrip() + "." for f in _as_list(row.get("facts")))
    steps = "\n".join(f"{i}. {q}" for i, q in enumerate(_as_list(row.get("decomposition")), start=1))
    parts = ([f"Facts: {facts}"] if facts else []) + ([f"Sub-questions:\n{steps}"] if steps else [])
    return Example(id=ex_id, question=row["question"].strip(), answer="yes" if answer else "no",
                   answer_type="yes_no", reasoning="\n".join(parts),
                   metadata={"source": "strategyqa", "term": row.get("term", "")})


def svamp_row(row: dict, ex_id: str) -> Example:
    answer = _number_answer(row["Answer"], ex_id)
    equation = re.sub(r"(\d+)\.0\b", r"\1", str(row["Equation"]).strip())
    equation = re.sub(r"\(\s+", "(", re.sub(r"\s+\)", ")", equation))
    return Example(id=ex_id, question=f"{row['Body'].strip()} {row['Question'].strip()}", answer=answer,
                   answer_type="number", reasoning=f"Equation: {equation} = {answer}",
                   metadata={"source": "svamp", "type": row.get("Type", ""),
                             "solution": f"Equation: {equation} = <<{equation}={answer}>>{answer}"})


def aqua_row(row: dict, ex_id: str) -> Example:
    return Example(id=ex_id, question=row["question"].strip(), answer=row["correct"].strip().upper(),
                   answer_type="choice", choices=[o.strip() for o in row["options"]],
                   reasoning=row.get("rationale", "").strip(), metadata={"source": "aqua"})


def arc_row(row: dict, ex_id: str) -> Example:
    choices = [f"{_letter(l)}){t}" for l, t in zip(row["choices"]["label"], row["choices"]["text"])]
    return Example(id=ex_id, question=row["question"].strip(), answer=_letter(row["answerKey"]),
                   answer_type="choice", choices=choices, metadata={"source": "arc"})


def mmlu_row(row: dict, ex_id: str) -> Example:
    choices = [f"{LETTERS[i]}){t}" for i, t in enumerate(row["choices"])]
    return Example(id=ex_id, question=row["question"].strip(), answer=LETTERS[int(row["answer"])],
                   answer_type="choice", choices=choices,
                   metadata={"source": "mmlu", "subject": row.get("subject", "")})


def mathqa_row(row: dict, ex_id: str) -> Example:
    # Options come as one string: "a ) 38 , b ) 27.675 , c ) 30 , d ) data inadequate , e ) none of these"
    parts = re.split(r"(?:^|,)\s*([a-e])\s*\)\s*", row["options"])
    choices = [f"{letter.upper()}){text.strip().rstrip(',').strip()}" for letter, text in zip(parts[1::2], parts[2::2])]
    return Example(id=ex_id, question=row["Problem"].strip(), answer=row["correct"].strip().upper(),
                   answer_type="choice", choices=choices, reasoning=row.get("Rationale", "").strip().strip('"'),
                   metadata={"source": "mathqa", "category": row.get("category", "")})


WIKI_CONTEXT_WORDS, WIKI_CONTINUATION_WORDS = 64, 16


def wiki_row(row: dict, ex_id: str) -> Example | None:
    """Wiki continuation (Markovian's wiki task): a paragraph's first 64 words, and its next 16 as the answer (free
    text: scored by its log-prob). Headings, blank lines and short paragraphs give None (skipped)."""
    words = row["text"].split()
    if row["text"].strip().startswith("=") or len(words) < WIKI_CONTEXT_WORDS + WIKI_CONTINUATION_WORDS:
        return None
    return Example(id=ex_id, question=" ".join(words[:WIKI_CONTEXT_WORDS]),
                   answer=" ".join(words[WIKI_CONTEXT_WORDS:WIKI_CONTEXT_WORDS + WIKI_CONTINUATION_WORDS]),
                   answer_type="text", metadata={"source": "wikitext"})


# hub name -> (hub id, default subset, default {split: hub split} (test None = seeded split), mapper)
HUB = {
    "gsm8k": ("openai/gsm8k", "main", {"train": "train", "test": "test"}, gsm8k_row),
    "gsm8k_aug": ("zen-E/GSM8k-Aug", None, {"train": "train", "test": "test"}, gsm8k_aug_row),
    "strategyqa": ("ChilleD/StrategyQA", None, {"train": "train", "test": "test"}, strategyqa_row),
    "svamp": ("ChilleD/SVAMP", None, {"train": "train", "test": "test"}, svamp_row),
    "arc": ("allenai/ai2_arc", "ARC-Challenge", {"train": "train", "test": "test"}, arc_row),
    "mmlu": ("cais/mmlu", "all", {"train": "validation", "test": "test"}, mmlu_row),
    "aqua": ("deepmind/aqua_rat", "raw", {"train": "train", "test": "test"}, aqua_row),
    "mathqa": ("allenai/math_qa", None, {"train": "train", "test": "test"}, mathqa_row),
    "wiki": ("Salesforce/wikitext", "wikitext-103-raw-v1", {"train": "train", "test": "test"}, wiki_row),
}


# ---------------------------------------------------------------- spec validation

def _bad(name: str, key: str, value: Any, why: str) -> ConfigError:
    return ConfigError(f"task_specs.{name}.{key}: {why} (got {value!r})")


def _fraction(name: str, spec: dict, default: float = 0.2) -> float:
    v = spec.get("test_fraction", default)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 1:
        raise _bad(name, "test_fraction", v, "must be a number strictly between 0 and 1")
    return float(v)


def _string(name: str, spec: dict, key: str, required: bool = False) -> str | None:
    v = spec.get(key)
    if v is None and not required:
        return None
    if not isinstance(v, str) or not v.strip():
        raise _bad(name, key, v, "must be a non-empty string")
    return v


def _int(name: str, spec: dict, key: str, default: int, lo: int, hi: int) -> int:
    v = spec.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise _bad(name, key, v, f"must be an integer in [{lo}, {hi}]")
    return v


SPEC_KEYS = {
    "gsm8k": set(),
    "strategyqa": {"test_fraction"},
    "svamp": {"test_fraction"},
    "aqua": set(),
    "reasoning_gym": {"dataset", "config"},
    "personal_relations": {"universe", "hops", "n_people", "distractors"},
    "lockers": {"colours", "digits"},
    "hidden_fact": set(),
    "hub": {"dataset", "subset", "split", "test_fraction", *GSM8K_AUG_CHOICES, "max_token_num"},
    "local": {"path", "test_path", "test_fraction", "fields", "answer_type"},
}


def _validate(name: str, spec: dict) -> str:
    if not isinstance(spec, dict):
        raise ConfigError(f"task_specs.{name}: must be a mapping with a 'source' key (got {spec!r})")
    source = spec.get("source")
    if source not in SPEC_KEYS:
        raise _bad(name, "source", source, f"unknown source; expected one of {sorted(SPEC_KEYS)}")
    for key in spec:
        if key != "source" and key not in SPEC_KEYS[source]:
            allowed = sorted(SPEC_KEYS[source]) or "none"
            raise _bad(name, key, spec[key], f"unknown key for source {source!r}; allowed: {allowed}")
    return source


# ---------------------------------------------------------------- sources

def _vendored_gsm8k(name, spec, sizes, seed):
    return {split: [gsm8k_row(r, f"gsm8k-{split}-{i}") for i, r in
                    enumerate(read_jsonl(BENCHMARKS / "gsm8k" / f"{split}.jsonl"))] for split in ("train", "test")}


def _vendored_strategyqa(name, spec, sizes, seed):
    rows = [strategyqa_row(r, f"strategyqa-{r['qid']}") for r in read_jsonl(BENCHMARKS / "strategyqa" / "train.jsonl")]
    train, test = seeded_split(rows, _fraction(name, spec), seed, stratify=lambda e: e.answer)
    return {"train": train, "test": test}


def _vendored_svamp(name, spec, sizes, seed):
    rows = json.loads((BENCHMARKS / "svamp" / "SVAMP.json").read_text(encoding="utf-8"))
    train, test = seeded_split([svamp_row(r, f"svamp-{r['ID']}") for r in rows], _fraction(name, spec), seed)
    return {"train": train, "test": test}


def _vendored_aqua(name, spec, sizes, seed):
    # The AQuA train file is not vendored (too large); dev stands in as training data.
    return {split: [aqua_row(r, f"aqua-{file}-{i}") for i, r in enumerate(read_jsonl(BENCHMARKS / "aqua" / f"{file}.json"))]
            for split, file in (("train", "dev"), ("test", "test"))}


def rg_item(dataset: str, item: dict, ex_id: str) -> Example:
    meta = item.get("metadata", {})
    answer = str(item["answer"]).strip()
    # syllogism says "Yes"/"No"; family_relationships gives lower-case relation words ("mother-in-law").
    answer = _number_answer(answer, ex_id) if RG_DATASETS[dataset] == "number" else answer.lower()
    reasoning, metadata = "", {"source": f"reasoning_gym/{dataset}"}
    if dataset == "gsm_symbolic":
        # metadata['answer_cot'] is a GSM8K-style worked solution ending in a '#### N' line.
        reasoning = re.sub(r"<<[^>]*>>", "", meta.get("answer_cot", "").rpartition("####")[0]).strip()
    if dataset == "syllogism":
        # No solution ships with syllogisms; a model check of the premises writes one (and may dispute the label).
        reasoning, follows = syllogism.reasoning([meta["premise1"], meta["premise2"]], meta["conclusion"])
        metadata["label_disputed"] = follows != (answer == "yes")
    return Example(id=ex_id, question=item["question"].strip(), answer=answer, answer_type=RG_DATASETS[dataset],
                   reasoning=reasoning, metadata=metadata)


def _reasoning_gym_options(name, spec):
    dataset = _string(name, spec, "dataset", required=True)
    if dataset not in RG_DATASETS:
        raise _bad(name, "dataset", dataset, f"unsupported reasoning_gym dataset; expected one of {sorted(RG_DATASETS)}")
    config = spec.get("config", {})
    if not isinstance(config, dict):
        raise _bad(name, "config", config, "must be a mapping of reasoning_gym dataset options")
    return dataset, config


def _reasoning_gym(name, spec, sizes, seed):
    import reasoning_gym

    dataset, config = _reasoning_gym_options(name, spec)
    out = {}
    for split in ("test", "train"):
        # Headroom for train rows dropped because they repeat a test question.
        size = sizes[split] + (sizes["test"] if split == "train" else 0)
        size = size * 5 // 4 if dataset == "syllogism" else size  # headroom for disputed labels (~12%)
        try:
            items = reasoning_gym.create_dataset(dataset, size=max(size, 1), seed=_derived_seed(seed, split), **config)
        except (TypeError, ValueError, AssertionError) as e:
            raise _bad(name, "config", config, f"rejected by reasoning_gym ({e})") from None
        rows = [rg_item(dataset, item, f"rg-{dataset}-{split}-{i}") for i, item in enumerate(items)]
        # reasoning-gym labels some invalid syllogisms valid (e.g. "All A are B; some B are not C" => "some A are
        # not C"); those rows would teach and score a logic error, so they are left out.
        out[split] = [ex for ex in rows if not ex.metadata.get("label_disputed")]
    return out


def _personal_relations_options(name, spec):
    universe = spec.get("universe", True)
    if not isinstance(universe, bool):
        raise _bad(name, "universe", universe, "must be true or false")
    hops = spec.get("hops", [1, 3])
    if (not isinstance(hops, (list, tuple)) or len(hops) != 2 or not all(type(h) is int for h in hops)
            or not 1 <= hops[0] <= hops[1] <= 10):
        raise _bad(name, "hops", hops, "must be [min, max] integers with 1 <= min <= max <= 10")
    return {"universe": universe, "hops": tuple(hops),
            "n_people": _int(name, spec, "n_people", 30, 3, len(personal_relations.NAMES)),
            "distractors": _int(name, spec, "distractors", 6, 0, 1000)}


def _personal_relations(name, spec, sizes, seed):
    return personal_relations.generate(sizes["train"], sizes["test"], seed, **_personal_relations_options(name, spec))


def _lockers_options(name, spec):
    colours = spec.get("colours", list(lockers.COLOURS))
    if (not isinstance(colours, (list, tuple)) or len(colours) < 2 or len(set(colours)) != len(colours)
            or not all(isinstance(c, str) and c.strip() for c in colours)):
        raise _bad(name, "colours", colours, "must be a list of at least 2 distinct names")
    return tuple(colours), _int(name, spec, "digits", 4, 1, 9)


def _lockers(name, spec, sizes, seed):
    return lockers.generate(sizes["train"], sizes["test"], seed, *_lockers_options(name, spec))


def _hidden_fact(name, spec, sizes, seed):
    return hidden_fact.generate(sizes["train"], sizes["test"], seed)


def _hub_options(name, spec):
    dataset = _string(name, spec, "dataset", required=True)
    if dataset not in HUB:
        raise _bad(name, "dataset", dataset, f"unknown hub dataset; expected one of {sorted(HUB)}")
    hub_id, subset, splits, mapper = HUB[dataset]
    subset = _string(name, spec, "subset") or subset
    given = spec.get("split", {})
    if not isinstance(given, dict) or set(given) - {"train", "test"} or not all(
            v is None or isinstance(v, str) for v in given.values()):
        raise _bad(name, "split", given, "must map train/test to hub split names (test: null = seeded split)")
    splits = {**splits, **given}
    options = {k: spec[k] for k in (*GSM8K_AUG_CHOICES, "max_token_num") if k in spec}
    for key, value in options.items():
        if dataset != "gsm8k_aug":
            raise _bad(name, key, value, "only dataset gsm8k_aug takes it")
        if key in GSM8K_AUG_CHOICES and value not in GSM8K_AUG_CHOICES[key]:
            raise _bad(name, key, value, f"expected one of {', '.join(GSM8K_AUG_CHOICES[key])}")
        if key == "max_token_num" and value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                                             or value < 1):
            raise _bad(name, key, value, "must be a positive integer or null (no length filter)")
    if options:
        mapper = functools.partial(mapper, **options)
    return dataset, hub_id, subset, splits, mapper


def _hub(name, spec, sizes, seed):
    dataset, hub_id, subset, splits, mapper = _hub_options(name, spec)

    def load(split: str) -> list[Example]:
        from cotlab import hub

        hub.offline_unless_reachable()  # before datasets reads HF_DATASETS_OFFLINE, at its import
        import datasets

        try:
            rows = datasets.load_dataset(hub_id, subset, split=split)
        except Exception as e:  # any failure (offline, renamed, missing split) must stop the run, not fall back
            raise DataError(
                f"task {name!r}: could not load {hub_id!r} (subset {subset!r}, split {split!r}) from the Hugging Face "
                f"hub: {type(e).__name__}: {e}. The hub may be unreachable (no network, or HF_HUB_OFFLINE set) or the "
                f"dataset/split name may be wrong. Use a vendored source (source: gsm8k, strategyqa, svamp or aqua) "
                f"or source: local with a downloaded file instead.") from None
        mapped = (mapper(dict(r), f"{dataset}-{split}-{i}") for i, r in enumerate(rows))
        return [ex for ex in mapped if ex is not None]  # a mapper skips rows that hold no example (wiki headings)

    train = load(splits["train"])
    if splits.get("test") is None:
        train, test = seeded_split(train, _fraction(name, spec), seed)
    else:
        test = load(splits["test"])
    return {"train": train, "test": test}


def _read_table(path: Path) -> list[dict]:
    if path.suffix.lower() != ".csv":
        return read_jsonl(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def _choices(value: Any) -> list[str]:
    if isinstance(value, str) and not value.strip().startswith("["):
        return [c.strip() for c in value.split("|") if c.strip()]  # CSV cells hold "A)1|B)2"
    return _as_list(value)


def local_rows(rows: list[dict], path: Path, fields: dict, answer_type: str | None, prefix: str) -> list[Example]:
    out = []
    for lineno, row in enumerate(rows, start=1):
        where = f"{path}: row {lineno}"
        get = {f: row.get(fields.get(f, f)) for f in Example.__dataclass_fields__}
        missing = [f"{f} (column {fields.get(f, f)!r})" for f in ("question", "answer")
                   if get[f] is None or str(get[f]).strip() == ""]
        kind = answer_type or get["answer_type"]
        if not kind:
            missing.append(f"answer_type (column {fields.get('answer_type', 'answer_type')!r}; or set task_specs.*.answer_type)")
        if missing:
            raise DataError(f"{where}: missing field(s) {', '.join(missing)}")
        answer = _number_answer(get["answer"], where) if kind == "number" else str(get["answer"]).strip()
        metadata = get["metadata"] or {}
        try:
            choices = _choices(get["choices"])
            metadata = json.loads(metadata) if isinstance(metadata, str) else dict(metadata)
            out.append(Example(id=str(get["id"] or f"{prefix}-{lineno}"), question=str(get["question"]), answer=answer,
                               answer_type=kind, choices=choices, reasoning=str(get["reasoning"] or ""),
                               context=str(get["context"] or ""), metadata=metadata))
        except (DataError, TypeError, ValueError) as e:
            raise DataError(f"{where}: {e}") from None
    return out


def _local_options(name, spec):
    path = Path(_string(name, spec, "path", required=True))
    fields = spec.get("fields", {})
    if not isinstance(fields, dict) or set(fields) - set(Example.__dataclass_fields__):
        raise _bad(name, "fields", fields, f"must map schema fields {list(Example.__dataclass_fields__)} to column names")
    answer_type = spec.get("answer_type")
    if answer_type is not None and answer_type not in ANSWER_TYPES:
        raise _bad(name, "answer_type", answer_type, f"must be one of {list(ANSWER_TYPES)}")
    return path, fields, answer_type, _string(name, spec, "test_path")


def _local(name, spec, sizes, seed):
    path, fields, answer_type, test_path = _local_options(name, spec)
    train = local_rows(_read_table(path), path, fields, answer_type, f"{name}-train")
    if test_path is None:
        train, test = seeded_split(train, _fraction(name, spec), seed)
    else:
        test = local_rows(_read_table(Path(test_path)), Path(test_path), fields, answer_type, f"{name}-test")
    return {"train": train, "test": test}


def check_task_spec(name: str, spec: dict) -> None:
    """Every key and value of one task spec, loading nothing: `python -m cotlab.sections` (and the check_params
    stage) runs it on every spec, so a bad one fails before the first stage, not when its data stage is reached."""
    source = _validate(name, spec)
    if "test_fraction" in spec:
        _fraction(name, spec)
    options = {"reasoning_gym": _reasoning_gym_options, "personal_relations": _personal_relations_options,
               "lockers": _lockers_options, "hub": _hub_options, "local": _local_options}
    if source in options:
        options[source](name, spec)


LOADERS = {
    "gsm8k": _vendored_gsm8k, "strategyqa": _vendored_strategyqa, "svamp": _vendored_svamp, "aqua": _vendored_aqua,
    "reasoning_gym": _reasoning_gym, "personal_relations": _personal_relations, "lockers": _lockers,
    "hidden_fact": _hidden_fact, "hub": _hub,
    "local": _local,
}


def _subsample(rows: list[Example], n: int | None, rng: random.Random) -> list[Example]:
    if n is None or n >= len(rows):
        return rows
    return [rows[i] for i in sorted(rng.sample(range(len(rows)), n))]


def load_task(name: str, spec: dict, n_train: int | None, n_test: int | None, seed: int) -> dict[str, list[Example]]:
    """Returns {"train": [...], "test": [...]}: deterministic for a seed, no normalised question shared
    between train and test, at most n_train / n_test rows each (None = all).

    A split that is empty although rows were asked for (n != 0) raises DataError naming the task and split.
    """
    source = _validate(name, spec)
    wanted = {"train": n_train, "test": n_test}
    for split, n in wanted.items():
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
            raise _bad(name, f"n_{split}", n, "must be a non-negative integer or null")
    sizes = {s: GENERATED_DEFAULT[s] if n is None else n for s, n in wanted.items()}
    if source in ("reasoning_gym", "personal_relations", "lockers", "hidden_fact"):
        wanted = sizes
    data = LOADERS[source](name, spec, sizes, seed)

    # an example is its question with its draft-only facts: the same question over a different hidden fact is no leak
    test_questions = {normalize_question(ex.draft_context + " " + ex.question) for ex in data["test"]}
    data["train"] = [ex for ex in data["train"]
                     if normalize_question(ex.draft_context + " " + ex.question) not in test_questions]
    out = {split: _subsample(data[split], wanted[split], _rng(seed, "subsample", split)) for split in ("train", "test")}
    for split, rows in out.items():
        if not rows and wanted[split] != 0:
            raise DataError(f"task {name!r}: the {split} split is empty (source {source!r}"
                            f"{', after removing questions shared with test' if split == 'train' else ''})")
    return out
