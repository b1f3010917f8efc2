"""The comparison table: every evaluated model on every task, paired against a reference on the same test set.

Differences are paired (the same questions): a paired bootstrap interval of the accuracy difference and
McNemar's exact test on the discordant pairs.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path

from cotlab.config import ConfigError
from cotlab.schema import DataError, read_jsonl
from cotlab.evaluation.baselines import answer_profile, majority_answer, task_baselines, vs_strongest
from cotlab.evaluation.stats import mcnemar_exact, paired_bootstrap_diff, summarize

@dataclass
class CompareConfig:
    reference: str = "base_zeroshot"
    # ablation -> the model it is paired against (same test questions)
    ablations: dict[str, str] = field(default_factory=lambda: {
        "dpo_no_draft": "dpo", "dpo_shuffled_draft": "dpo", "dpo_no_cot": "dpo"})
    # "model@task vs model@task": paired on the same question ids, across tasks too (e.g. the same questions with
    # and without the universe in the prompt)
    pairs: list[str] = field(default_factory=lambda: [
        "codi@personal_relations vs codi@personal_relations_no_universe",
        "codi@personal_relations vs cot_sft@personal_relations",
        "codi@personal_relations_no_universe vs cot_sft@personal_relations_no_universe",
        "codi@personal_relations vs base_fewshot_cot@personal_relations",
        "markovian@lockers vs markovian_base@lockers",
        "non_markovian@lockers vs non_markovian_base@lockers",
        "markovian@lockers vs non_markovian@lockers",
        "transplant@svamp vs no_transplant@svamp",
        "transplant@svamp vs transplant_masked@svamp",
        "transplant_masked@svamp vs no_transplant@svamp"])
    # short name -> the paired comparison a system is about: metrics/summary/<system>.json's "pp" (the difference
    # in points). Short and few (the ablations stay in compare.json), so that `dvc exp show --keep '^pp\.'` with an
    # experiment's name beside them fits 120 columns
    headline: dict[str, str] = field(default_factory=lambda: {
        "phase_b": "cot_distill@hidden_fact vs base_zeroshot@hidden_fact",
        "dpo": "dpo@hidden_fact vs base_zeroshot@hidden_fact",
        "universe": "codi@personal_relations vs codi@personal_relations_no_universe",
        "codi_fs": "codi@personal_relations vs base_fewshot_cot@personal_relations",
        "markovian": "markovian@lockers vs markovian_base@lockers",
        "transplant": "transplant@svamp vs no_transplant@svamp"})
    # system -> the scale its effect needs, for a system the run sizes only to exercise its stages (the report
    # prints it under the mechanism checks, so a "no" there is not read as evidence against the method)
    scale_needed: dict[str, str] = field(default_factory=lambda: {
        "transplant": "the source saw its effect after ~12,000 training samples (steps x batch_size)"})
    bootstrap_resamples: int = 2000
    confidence: float = 0.95

    def __post_init__(self):
        for key, pair in [(f"pairs[{i}]", p) for i, p in enumerate(self.pairs)] + [
                (f"headline.{name}", p) for name, p in self.headline.items()]:
            if not re.fullmatch(r"[\w.-]+@[\w.-]+ vs [\w.-]+@[\w.-]+", pair):
                raise ConfigError(f"{key}: {pair!r} is not 'model@task vs model@task'")
        for name in self.headline:
            if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
                raise ConfigError(f"headline.{name}: a headline needs a short lower-case name (letters, digits, _)")


CODI_MODELS = ("codi", "cot_sft", "base_fewshot_cot")  # eval_codi@<task>'s outs
MARKOVIAN_MODELS = ("markovian", "markovian_base", "non_markovian", "non_markovian_base")  # eval_markovian@<task>
TRANSPLANT_MODELS = ("transplant", "transplant_masked", "no_transplant")  # the transplant stages' evaluations


def load_predictions(eval_dir: str | Path, tasks: list[str] | None = None,
                     optional: dict[str, tuple[str, ...]] | None = None) -> dict[str, dict[str, list[dict]]]:
    """{task: {model: predictions}} from eval/<model>/<task>/predictions.jsonl, for `tasks` (each must have some)
    and, taken when present, the models `optional` names for a task outside `tasks`. Nothing else: outputs of
    tasks and models dropped from params.yaml stay in the workspace and must not reach the table."""
    table: dict[str, dict[str, list[dict]]] = {}
    for path in sorted(Path(eval_dir).glob("*/*/predictions.jsonl")):
        model, task = path.parent.parent.name, path.parent.name
        if tasks is None or task in tasks or model in (optional or {}).get(task, ()):
            table.setdefault(task, {})[model] = read_jsonl(path)
    missing = [t for t in tasks or [] if t not in table]
    if not table or missing:
        raise DataError(f"{eval_dir}: no predictions for task(s) {missing or tasks} "
                        "(expected <model>/<task>/predictions.jsonl)")
    return table


def optional_models(codi_tasks: list[str], markovian_tasks: list[str],
                    transplant_tasks: list[str]) -> dict[str, tuple[str, ...]]:
    """`load_predictions`'s `optional`: CODI's, Markovian's and the transplant's tasks bring only their own models,
    and are optional, so a pair whose side was not evaluated is reported as such in the table. A task in several
    lists brings the models of each, in that order."""
    optional: dict[str, tuple[str, ...]] = {}
    for tasks, models in ((codi_tasks, CODI_MODELS), (markovian_tasks, MARKOVIAN_MODELS),
                          (transplant_tasks, TRANSPLANT_MODELS)):
        for task in tasks:
            optional[task] = optional.get(task, ()) + models
    return optional


def paired(task: str, model: str, preds: list[dict], against: str, ref: list[dict], n_resamples: int,
           confidence: float, seed: int) -> dict:
    """`model` minus `against` on the same questions: difference, paired bootstrap interval, McNemar p."""
    ref_by_id = {p["id"]: p for p in ref}
    shared = [p for p in preds if p["id"] in ref_by_id]
    if len(shared) != len(preds) or len(shared) != len(ref):
        raise DataError(f"task {task}: {model} and {against} were evaluated on different test sets "
                        f"({len(preds)} vs {len(ref)} rows, {len(shared)} shared); re-run evaluation")
    a = [bool(ref_by_id[p["id"]]["correct"]) for p in shared]
    b = [bool(p["correct"]) for p in shared]
    return _paired_vectors(a, b, n_resamples, confidence, seed)


def _paired_vectors(a: list[bool], b: list[bool], n_resamples: int, confidence: float, seed: int) -> dict:
    boot = paired_bootstrap_diff(a, b, n_resamples=n_resamples, confidence=confidence, seed=seed)
    return {"diff": boot["diff"], "ci_low": boot["ci_low"], "ci_high": boot["ci_high"],
            "mcnemar_p": mcnemar_exact(a, b)["p_value"]}


def answer_type_of(preds: list[dict]) -> str:
    """The rows' answer type; "label" for rows that name none (the transplant's candidate identifiers)."""
    return preds[0].get("answer_type", "label") if preds else "label"


def train_answers(path: str | Path) -> dict:
    """A train split's gold answers and answer-set size, as `baselines` takes them: rows in the example schema
    (answer, answer_type, choices) or the transplant's candidate rows (the correct candidate's identifier among
    candidate_answers)."""
    rows = read_jsonl(path)
    if not rows:
        raise DataError(f"{path}: an empty train split has no majority class")
    if "candidate_answers" in rows[0]:
        return {"golds": [str(r["correct"]) for r in rows], "n_options": len(rows[0]["candidate_answers"])}
    answer_type = rows[0].get("answer_type")
    n_options = 2 if answer_type == "yes_no" else (
        round(sum(len(r.get("choices") or []) for r in rows) / len(rows)) or None if answer_type == "choice" else None)
    return {"golds": [str(r["answer"]) for r in rows], "n_options": n_options}


def baselines(table: dict[str, dict[str, list[dict]]], train: dict[str, dict]) -> dict[str, dict]:
    """Per task with a train split in `train` ({task: {"golds": [...], "n_options": k or None}}): the trivial
    baselines of cotlab.evaluation.baselines on its test questions (read from any model's rows: all share them)."""
    out = {}
    for task, models in sorted(table.items()):
        if task not in train or not models:
            continue
        preds = next(iter(models.values()))
        answer_type = answer_type_of(preds)
        majority = majority_answer(train[task]["golds"], answer_type)
        out[task] = {"n_train": len(train[task]["golds"]), "answer_type": answer_type,
                     **task_baselines(preds, answer_type, majority, train[task].get("n_options"))}
    return out


def compare(table: dict[str, dict[str, list[dict]]], reference: str, n_resamples: int, confidence: float,
            seed: int, ablations: dict[str, str] | None = None, trivial: dict[str, dict] | None = None) -> dict:
    """Per task and model: accuracy with its interval, the paired difference against `reference`, and for an
    ablation (a key of `ablations`) also against the model it ablates. Every model also gets the share of its most
    common answer, `collapsed`, balanced accuracy, and, where `trivial` (`baselines`) has its task, the difference
    against the task's strongest trivial baseline with its p."""
    result: dict[str, dict] = {}
    for task, models in sorted(table.items()):
        result[task] = {}
        for model, preds in sorted(models.items()):
            summary = summarize(preds)
            row = {k: summary[k] for k in ("n", "accuracy", "accuracy_ci_low", "accuracy_ci_high",
                                            "invalid_rate", "truncation_rate")}
            row.update(answer_profile(preds, answer_type_of(preds)))
            if task in (trivial or {}) and trivial[task]["answer_type"] == answer_type_of(preds):
                row.update(vs_strongest(preds, answer_type_of(preds), trivial[task],
                                        lambda a, b: _paired_vectors(a, b, n_resamples, confidence, seed)))
            if reference in models and model != reference:
                d = paired(task, model, preds, reference, models[reference], n_resamples, confidence, seed)
                row.update({"diff_vs_ref": d["diff"], "diff_ci_low": d["ci_low"], "diff_ci_high": d["ci_high"],
                            "mcnemar_p": d["mcnemar_p"]})
            full = (ablations or {}).get(model)
            if full in models:
                d = paired(task, model, preds, full, models[full], n_resamples, confidence, seed)
                row.update({"ablation_of": full, "diff_vs_full": d["diff"], "diff_vs_full_ci_low": d["ci_low"],
                            "diff_vs_full_ci_high": d["ci_high"], "mcnemar_p_vs_full": d["mcnemar_p"]})
            result[task][model] = row
    return result


def parse_pair(pair: str) -> tuple[tuple[str, str], tuple[str, str]]:
    """"codi@personal_relations vs cot_sft@personal_relations" -> ((codi, personal_relations), (cot_sft, ...))."""
    left, right = (side.strip().split("@") for side in pair.split(" vs "))
    return (left[0], left[1]), (right[0], right[1])


def compare_pairs(table: dict[str, dict[str, list[dict]]], pairs: list[str], n_resamples: int, confidence: float,
                  seed: int) -> dict[str, dict]:
    """Each "model@task vs model@task" on the question ids both share (they must share all of them); a pair whose
    predictions are absent is reported as missing rather than dropped without a word."""
    out = {}
    for pair in pairs:
        (model, task), (against, against_task) = parse_pair(pair)
        preds, ref = table.get(task, {}).get(model), table.get(against_task, {}).get(against)
        if preds is None or ref is None:
            out[pair] = {"missing": [f"{m}@{t}" for m, t, p in ((model, task, preds), (against, against_task, ref))
                                     if p is None]}
            continue
        d = paired(f"{task} / {against_task}", model, preds, against, ref, n_resamples, confidence, seed)
        out[pair] = {"n": len(preds), "accuracy": summarize(preds)["accuracy"],
                     "against_accuracy": summarize(ref)["accuracy"], **d}
    return out


def verification(table: dict[str, dict[str, list[dict]]], models: tuple[str, ...], n_resamples: int,
                 confidence: float, seed: int) -> dict[str, dict[str, dict]]:
    """Transplant verification, per task and model: accuracy next to the argument's own correctness rate (the base
    rate of simply following it) and how often the verdict follows the argument; the verdict is paired against
    following the argument on the same items."""
    out: dict[str, dict[str, dict]] = {}
    for task, evaluated in sorted(table.items()):
        for model in models:
            preds = evaluated.get(model)
            if preds is None:
                continue
            follow = [{"id": p["id"], "correct": p["argument_correct"]} for p in preds]
            d = paired(task, model, preds, "argument", follow, n_resamples, confidence, seed)
            summary = summarize(preds)
            n = summary["n"]
            right = [p for p in preds if p["argument_correct"]]
            wrong = [p for p in preds if not p["argument_correct"]]
            out.setdefault(task, {})[model] = {
                "n": n, "accuracy": summary["accuracy"], "accuracy_ci_low": summary["accuracy_ci_low"],
                "accuracy_ci_high": summary["accuracy_ci_high"],
                "argument_correct_rate": len(right) / n,
                "follows_argument_rate": sum(p["follows_argument"] for p in preds) / n,
                # None (JSON null), not NaN, where the argument was never right (or never wrong)
                "accuracy_argument_right": sum(p["correct"] for p in right) / len(right) if right else None,
                "accuracy_argument_wrong": sum(p["correct"] for p in wrong) / len(wrong) if wrong else None,
                "diff_vs_argument": d["diff"], "diff_vs_argument_ci_low": d["ci_low"],
                "diff_vs_argument_ci_high": d["ci_high"], "mcnemar_p_vs_argument": d["mcnemar_p"]}
    return out


def _fmt_pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _fmt_top(r: dict) -> str:
    """"no 100%" and, when the model is collapsed, the flag a reader must not miss."""
    top = f"{r['top_answer']} {_fmt_pct(r['top_share'])}%"
    return f"**{top} collapsed**" if r["collapsed"] else top


def _fmt_vs_baseline(r: dict) -> str:
    if "baseline" not in r:
        return "-"
    return f"{100 * r['diff_vs_baseline']:+.1f} vs {r['baseline']} (p={r['p_vs_baseline']:.3g})"


def baselines_markdown(trivial: dict[str, dict]) -> list[str]:
    lines = ["## Trivial baselines", "",
             "What an accuracy must beat before it means anything, per task on its test questions: the majority class "
             "(the train split's most frequent answer, always answered), chance (1/k where the answer set is finite) "
             "and, where the rows record an argument, following it. `strongest` is the one every model is tested "
             "against in the accuracy table; a model whose most common answer takes >= 90% of the rows is "
             "**collapsed**.", "",
             "| task | majority answer (train) | majority % | chance % | follow the argument % | strongest |",
             "|---|---|---|---|---|---|"]
    for task, b in trivial.items():
        lines.append(f"| {task} | {b['majority_answer']} | {_fmt_pct(b['majority_accuracy'])} | "
                     f"{_fmt_pct(b['chance'])} | {_fmt_pct(b['follow_argument_accuracy'])} | {b['strongest']} |")
    return lines + [""]


def markdown(result: dict, reference: str, pairs: dict[str, dict] | None = None,
             verified: dict[str, dict[str, dict]] | None = None,
             figures: list[tuple[str, str]] | None = None, mechanisms: str | None = None,
             trivial: dict[str, dict] | None = None) -> str:
    """The report; `figures` are (title, path relative to the report) of the images it embeds after the tables;
    `mechanisms`, the mechanism checks' section, comes first, then the trivial baselines (`trivial`)."""
    lines = [
        "# Comparison",
        "",
        *([mechanisms.rstrip("\n"), ""] if mechanisms else []),
        *(baselines_markdown(trivial) if trivial else []),
        *(["## Accuracy", ""] if mechanisms or trivial else []),
        f"Accuracy (flexible extraction) with Wilson 95% intervals; differences are against `{reference}` on the "
        "same questions (paired bootstrap interval, McNemar exact p) and against the task's strongest trivial "
        "baseline (McNemar, or an exact binomial test against chance). Balanced accuracy is the mean per-class "
        "recall; the top answer is the model's most common one with its share of the rows.",
        "",
        "| task | model | n | accuracy % | 95% CI | balanced % | top answer | invalid % | truncated % | "
        "diff vs ref (pp) | diff 95% CI | McNemar p | vs strongest baseline (pp) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for task, models in result.items():
        for model, r in models.items():
            diff = ci = p = "-"
            if "diff_vs_ref" in r:
                diff = f"{100 * r['diff_vs_ref']:+.1f}"
                ci = f"[{100 * r['diff_ci_low']:+.1f}, {100 * r['diff_ci_high']:+.1f}]"
                p = f"{r['mcnemar_p']:.3g}"
            lines.append(
                f"| {task} | {model} | {r['n']} | {_fmt_pct(r['accuracy'])} | "
                f"[{_fmt_pct(r['accuracy_ci_low'])}, {_fmt_pct(r['accuracy_ci_high'])}] | "
                f"{_fmt_pct(r.get('balanced_accuracy'))} | {_fmt_top(r)} | "
                f"{_fmt_pct(r['invalid_rate'])} | {_fmt_pct(r['truncation_rate'])} | {diff} | {ci} | {p} | "
                f"{_fmt_vs_baseline(r)} |"
            )
    ablation_rows = [(task, model, r) for task, models in result.items() for model, r in models.items()
                     if "ablation_of" in r]
    if ablation_rows:
        lines += ["", "## Ablations", "",
                  "Each ablation against the model it ablates, on the same questions.", "",
                  "| task | ablation | of | accuracy % | of % | diff (pp) | diff 95% CI | McNemar p |",
                  "|---|---|---|---|---|---|---|---|"]
        for task, model, r in ablation_rows:
            full = result[task][r["ablation_of"]]
            lines.append(f"| {task} | {model} | {r['ablation_of']} | {_fmt_pct(r['accuracy'])} | "
                         f"{_fmt_pct(full['accuracy'])} | {100 * r['diff_vs_full']:+.1f} | "
                         f"[{100 * r['diff_vs_full_ci_low']:+.1f}, {100 * r['diff_vs_full_ci_high']:+.1f}] | "
                         f"{r['mcnemar_p_vs_full']:.3g} |")
    if pairs:
        lines += ["", "## Paired comparisons", "",
                  "Each `model@task` against another on the same question ids (paired bootstrap interval, McNemar "
                  "exact p).", "",
                  "| comparison | n | accuracy % | against % | diff (pp) | diff 95% CI | McNemar p |",
                  "|---|---|---|---|---|---|---|"]
        for pair, r in pairs.items():
            if "missing" in r:
                lines.append(f"| {pair} | - | - | - | - | - | not evaluated: {', '.join(r['missing'])} |")
                continue
            lines.append(f"| {pair} | {r['n']} | {_fmt_pct(r['accuracy'])} | {_fmt_pct(r['against_accuracy'])} | "
                         f"{100 * r['diff']:+.1f} | [{100 * r['ci_low']:+.1f}, {100 * r['ci_high']:+.1f}] | "
                         f"{r['mcnemar_p']:.3g} |")
    if verified:
        lines += ["", "## Transplant verification", "",
                  "The verdict's accuracy next to the argument's own correctness rate (what following the argument "
                  "scores) and how often the verdict follows the argument; the difference is paired against "
                  "following the argument on the same items (paired bootstrap interval, McNemar exact p). The "
                  "pairs above compare the transplant with its controls.", "",
                  "| task | model | n | accuracy % | 95% CI | argument correct % | follows argument % | "
                  "accuracy when the argument is right % | ... when wrong % | vs argument (pp) | 95% CI | McNemar p |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for task, models in verified.items():
            for model, r in models.items():
                lines.append(
                    f"| {task} | {model} | {r['n']} | {_fmt_pct(r['accuracy'])} | "
                    f"[{_fmt_pct(r['accuracy_ci_low'])}, {_fmt_pct(r['accuracy_ci_high'])}] | "
                    f"{_fmt_pct(r['argument_correct_rate'])} | {_fmt_pct(r['follows_argument_rate'])} | "
                    f"{_fmt_pct(r['accuracy_argument_right'])} | {_fmt_pct(r['accuracy_argument_wrong'])} | "
                    f"{100 * r['diff_vs_argument']:+.1f} | [{100 * r['diff_vs_argument_ci_low']:+.1f}, "
                    f"{100 * r['diff_vs_argument_ci_high']:+.1f}] | {r['mcnemar_p_vs_argument']:.3g} |")
    if figures:
        lines += ["", "## Figures", ""]
        for title, path in figures:
            lines += [f"### {title}", "", f"![{title}]({path})", ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def write_markdown(path: str | Path, result: dict, reference: str, pairs: dict[str, dict] | None = None,
                   verified: dict[str, dict[str, dict]] | None = None,
                   figures: list[tuple[str, str]] | None = None, mechanisms: str | None = None,
                   trivial: dict[str, dict] | None = None) -> str:
    """Write `markdown`'s report to `path` (making its folder) and return it."""
    report = markdown(result, reference, pairs, verified, figures, mechanisms, trivial)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(report)
    return report


SYSTEMS = {"codi": CODI_MODELS, "markovian": MARKOVIAN_MODELS, "transplant": TRANSPLANT_MODELS}


def system_of(model: str) -> str:
    """The research system a model belongs to: CODI's, Markovian's, the transplant's, else the self-improving one."""
    return next((name for name, models in SYSTEMS.items() if model in models), "self_improving")


def _points(x: float | None) -> float | None:
    return None if x is None else round(100 * x, 1)


def summaries(result: dict, headline: dict[str, str], n_resamples: int, confidence: float, seed: int,
              table: dict[str, dict[str, list[dict]]], verified: dict[str, dict[str, dict]] | None = None,
              trivial: dict[str, dict] | None = None) -> dict[str, dict]:
    """metrics/summary/<system>.json: "pp", each headline comparison's difference in points (null when a side was
    not evaluated); "effects", the same comparisons in full (accuracies, paired bootstrap interval, McNemar p);
    "accuracy", every model of the system per task with its Wilson interval, the share of its top answer,
    `collapsed`, balanced accuracy and its difference against the task's strongest trivial baseline; "baselines",
    the trivial baselines of the system's tasks (`trivial`); for the transplant also the verdict against following
    the argument. Every system has a file (dvc.yaml declares each)."""
    out: dict[str, dict] = {name: {"pp": {}, "effects": {}, "accuracy": {}, "baselines": {}} for name in
                            ("self_improving", *SYSTEMS)}
    effects = compare_pairs(table, list(headline.values()), n_resamples, confidence, seed)
    for name, pair in headline.items():
        (model, _), (against, against_task) = parse_pair(pair)
        system, effect = out[system_of(model)], effects[pair]
        system["pp"][name] = _points(effect.get("diff"))
        # a yardstick that gives one answer to nearly every question is no yardstick: the effect says so
        collapsed = result.get(against_task, {}).get(against, {}).get("collapsed")
        system["effects"][name] = {"pair": pair, **effect, "against_collapsed": collapsed}
    for task, models in result.items():
        for model, r in models.items():
            out[system_of(model)]["accuracy"].setdefault(task, {})[model] = {
                k: r[k] for k in ("n", "accuracy", "accuracy_ci_low", "accuracy_ci_high", "balanced_accuracy",
                                  "top_share", "collapsed", "baseline", "diff_vs_baseline", "p_vs_baseline")
                if k in r}
            if task in (trivial or {}):
                out[system_of(model)]["baselines"][task] = trivial[task]
    for task, models in (verified or {}).items():
        for model, r in models.items():
            out["transplant"]["effects"][f"{model}_vs_argument@{task}"] = {
                "n": r["n"], "accuracy": r["accuracy"], "against_accuracy": r["argument_correct_rate"],
                "diff": r["diff_vs_argument"], "ci_low": r["diff_vs_argument_ci_low"],
                "ci_high": r["diff_vs_argument_ci_high"], "mcnemar_p": r["mcnemar_p_vs_argument"],
                "follows_argument_rate": r["follows_argument_rate"]}
    return out  # every system, evaluated or not: dvc.yaml declares each file


def write_accuracy_plot(result: dict, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["label", "task", "model", "accuracy", "ci_low", "ci_high"])
        for task, models in result.items():
            for model, r in models.items():
                writer.writerow([f"{task}/{model}", task, model, r["accuracy"], r["accuracy_ci_low"],
                                 r["accuracy_ci_high"]])
