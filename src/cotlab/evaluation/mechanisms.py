"""Mechanism checks: per research system, the effect the method exists for, measured on a configuration where it must
appear if the implementation is right, next to the ablation that should remove it. Each check is a row: the effect,
its interval, its p-value, the ablation's figure and whether the effect is shown (p < alpha). compare.md's
"Mechanism checks" section and metrics/mechanisms.json are these rows.

Read from what the stages wrote (predictions under eval/, metrics files, attribution scores); a check whose inputs
are absent says so instead of vanishing."""

from __future__ import annotations

import json
import math
from pathlib import Path

from scipy import stats

from cotlab.evaluation.stats import mcnemar_exact, wilson_interval
from cotlab.schema import read_jsonl

ALPHA = 0.05
DRAFT_DROP = 0.03  # the seed's bar for the no-draft and shuffled-draft ablations: accuracy falls by >= 3 pp
IG_TARGET = 0.05  # the completeness error integrated gradients should stay under (relative to f(x) - f(x'))


def _read(root: Path, rel: str) -> dict | None:
    path = root / rel
    return json.loads(path.read_text()) if path.exists() else None


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _pp(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:+.1f} pp"


def _ci(low: float | None, high: float | None, points: bool = False) -> str:
    if low is None or high is None:
        return "-"
    return f"[{100 * low:+.1f}, {100 * high:+.1f}] pp" if points else f"[{100 * low:.1f}, {100 * high:.1f}]%"


def spearman_interval(rho: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Interval for a Spearman correlation of n pairs: Fisher's z with Bonett & Wright's (2000) variance for rank
    correlations, var(atanh(rho)) = (1 + rho^2 / 2) / (n - 3). n <= 3 or a nan rho gives (nan, nan)."""
    if n <= 3 or math.isnan(rho):
        return (math.nan, math.nan)
    z = math.atanh(min(max(rho, -0.999999), 0.999999))
    half = stats.norm.ppf(0.5 + confidence / 2) * math.sqrt((1 + rho ** 2 / 2) / (n - 3))
    return (math.tanh(z - half), math.tanh(z + half))


def _rho_ci(rho: float, n: int) -> str:
    low, high = spearman_interval(rho, n)
    return "-" if low != low else f"rho [{low:+.2f}, {high:+.2f}]"


def _row(system: str, check: str, effect: str, interval: str, p: float | None, ablation: str,
         shown: bool | None = None) -> dict:
    """`shown`: None = decided by p < ALPHA; a check with a threshold of its own (IG's 5%) passes its verdict."""
    return {"system": system, "check": check, "effect": effect, "interval": interval, "p": p,
            "ablation": ablation, "shown": (p is not None and p < ALPHA) if shown is None else shown}


def _missing(system: str, check: str, what: str) -> dict:
    return {"system": system, "check": check, "effect": f"not run: {what}", "interval": "-", "p": None,
            "ablation": "-", "shown": False}


def _pair_row(system: str, check: str, pair: dict | None, name: str, ablation: str) -> dict:
    if pair is None or "missing" in pair:
        return _missing(system, check, ", ".join((pair or {}).get("missing", [name])))
    effect = f"{_pct(pair['accuracy'])} vs {_pct(pair['against_accuracy'])} ({_pp(pair['diff'])}, n={pair['n']})"
    return _row(system, check, effect, _ci(pair["ci_low"], pair["ci_high"], points=True), pair["mcnemar_p"], ablation)


def _pair_text(pair: dict | None) -> str:
    if pair is None or "missing" in pair:
        return "not evaluated"
    return f"{_pp(pair['diff'])} (p={pair['mcnemar_p']:.3g})"


def markovian_checks(root: Path, task: str, pairs: dict[str, dict], table: dict) -> list[dict]:
    system, rows = "markovian", []
    trained, ablation = (_read(root, f"metrics/train/{v}/{task}.json") for v in ("markovian", "non_markovian"))
    if trained is None:
        rows.append(_missing(system, f"reward trend @{task}", f"metrics/train/markovian/{task}.json"))
    else:
        abl = ("not run" if ablation is None else f"question shown (non_markovian): rho "
               f"{ablation['answer_logprob_trend_spearman']:+.2f}, p={ablation['answer_logprob_trend_p']:.3g}")
        rows.append(_row(system, f"reward trend @{task}",
                         f"gold-answer log-prob over {trained['steps']} steps: Spearman rho "
                         f"{trained['answer_logprob_trend_spearman']:+.2f} ({trained['answer_logprob_first_quarter']:.2f}"
                         f" -> {trained['answer_logprob_last_quarter']:.2f}, first vs last quarter)",
                         _rho_ci(trained["answer_logprob_trend_spearman"], trained["steps"]),
                         trained["answer_logprob_trend_p"], abl))
    rows.append(_pair_row(system, f"two-stage accuracy @{task}", pairs.get(f"markovian@{task} vs markovian_base@{task}"),
                          f"markovian@{task}", "non_markovian vs its base: " + _pair_text(
                              pairs.get(f"non_markovian@{task} vs non_markovian_base@{task}"))))
    models = table.get(task, {})
    if "markovian" in models and "markovian_base" in models and "cot_contains_answer" in models["markovian"][0]:
        carried = [bool(r["cot_contains_answer"]) for r in models["markovian"]]
        base = {r["id"]: bool(r["cot_contains_answer"]) for r in models["markovian_base"]}
        k, n = sum(carried), len(carried)
        low, high = wilson_interval(k, n)
        other = models.get("non_markovian")
        abl = ("not evaluated" if other is None else
               f"question shown (non_markovian): {_pct(sum(r['cot_contains_answer'] for r in other) / len(other))}")
        rows.append(_row(system, f"CoT carries the answer @{task}",
                         f"CoTs that spell out the gold answer: {_pct(k / n)} vs base "
                         f"{_pct(sum(base.values()) / len(base))} (n={n})", _ci(low, high),
                         mcnemar_exact(carried, [base[r["id"]] for r in models["markovian"]])["p_value"], abl))
    else:
        rows.append(_missing(system, f"CoT carries the answer @{task}", f"eval/markovian/{task}"))
    return rows


def codi_checks(root: Path, task: str, without: str | None, pairs: dict[str, dict]) -> list[dict]:
    system = "codi"
    rows = [_pair_row(system, f"CODI vs few-shot base @{task}", pairs.get(f"codi@{task} vs base_fewshot_cot@{task}"),
                      f"codi@{task}", "without the universe: " + (_pair_text(pairs.get(
                          f"codi@{without} vs base_fewshot_cot@{without}")) if without else "not run"))]
    gap = _pair_row(system, f"gap to CoT-SFT @{task}", pairs.get(f"codi@{task} vs cot_sft@{task}"), f"codi@{task}",
                    "-")
    codi, cot_sft = (_read(root, f"metrics/eval/{m}/{task}.json") for m in ("codi", "cot_sft"))
    if codi and cot_sft and codi.get("mean_new_tokens"):
        gap["ablation"] = (f"tokens generated: {codi['mean_new_tokens']:.1f} vs {cot_sft['mean_new_tokens']:.1f} "
                           f"({cot_sft['mean_new_tokens'] / codi['mean_new_tokens']:.1f}x fewer)")
    gap["shown"] = None  # a gap is reported, not an effect to show
    rows.append(gap)
    if without:
        rows.append(_pair_row(system, "universe effect", pairs.get(f"codi@{task} vs codi@{without}"), f"codi@{task}",
                              f"the universe removed from the prompt ({without})"))
    probe = _read(root, f"metrics/codi_probe/{task}.json")
    if probe is None or not probe.get("relevance_n"):
        rows.append(_missing(system, f"probes name the reasoning @{task}", f"metrics/codi_probe/{task}.json"))
    else:
        rows.append(_row(system, f"probes name the reasoning @{task}",
                         f"thoughts whose top tokens start a name of the replaced reasoning: "
                         f"{_pct(probe['relevance_hit_rate'])} (n={probe['relevance_n']})",
                         _ci(probe["relevance_hit_rate_ci_low"], probe["relevance_hit_rate_ci_high"]),
                         probe["relevance_p"], f"another question's names: {_pct(probe['relevance_control_rate'])}"))
    return rows


def self_improving_checks(root: Path, task: str, result: dict) -> list[dict]:
    system, rows, models = "self_improving", [], result.get(task, {})
    for model, phase in (("cot_distill", "Phase B"), ("dpo", "Phase C")):
        r = models.get(model)
        if r is None or "diff_vs_ref" not in r:
            rows.append(_missing(system, f"{phase} vs base @{task}", f"eval/{model}/{task}"))
            continue
        ablations = [f"{m[4:]}: {_pp(a['diff_vs_full'])} (p={a['mcnemar_p_vs_full']:.3g})"
                     for m, a in models.items() if a.get("ablation_of") == model]
        rows.append(_row(system, f"{phase} vs base @{task}",
                         f"{_pct(r['accuracy'])} vs {_pct(models['base_zeroshot']['accuracy'])} "
                         f"({_pp(r['diff_vs_ref'])}, invalid {_pct(r['invalid_rate'])}, n={r['n']})",
                         _ci(r["diff_ci_low"], r["diff_ci_high"], points=True), r["mcnemar_p"],
                         "; ".join(ablations) or "-"))
    # Does Phase C read the draft? The seed's bar: removing or shuffling the draft costs >= 3 pp (here also p < ALPHA)
    drops = {m: models.get(f"dpo_{m}") for m in ("no_draft", "shuffled_draft")}
    if "dpo" in models and all(a is not None and "diff_vs_full" in a for a in drops.values()):
        no_draft, shuffled = drops["no_draft"], drops["shuffled_draft"]
        rows.append(_row(system, f"the draft carries information @{task}",
                         f"Phase C without its draft {_pp(no_draft['diff_vs_full'])}, with another question's draft "
                         f"{_pp(shuffled['diff_vs_full'])} (p={shuffled['mcnemar_p_vs_full']:.3g}); bar: a drop of "
                         f">= {100 * DRAFT_DROP:.0f} pp", _ci(no_draft["diff_vs_full_ci_low"],
                                                          no_draft["diff_vs_full_ci_high"], points=True),
                         no_draft["mcnemar_p_vs_full"], "no_draft and shuffled_draft evaluations of the same model",
                         shown=all(a["diff_vs_full"] <= -DRAFT_DROP and a["mcnemar_p_vs_full"] < ALPHA
                                   for a in drops.values())))
    else:
        rows.append(_missing(system, f"the draft carries information @{task}", f"eval/dpo_no_draft/{task}"))
    dpo = _read(root, f"metrics/train/dpo/{task}.json") or {}
    if "heldout.preference_accuracy" in dpo:
        # The implicit reward is 0 for a policy equal to its reference: shown when the interval clears chance (50%)
        rows.append(_row(system, f"DPO held-out preference accuracy @{task}",
                         f"implicit reward of chosen > rejected on {_pct(dpo['heldout.preference_accuracy'])} of "
                         f"{dpo['heldout.n_pairs']} test pairs",
                         _ci(dpo["heldout.preference_accuracy_ci_low"], dpo["heldout.preference_accuracy_ci_high"]),
                         dpo["heldout.logprob_accuracy_mcnemar_p"],
                         f"log p(chosen) > log p(rejected): {_pct(dpo['heldout.policy_logprob_accuracy'])} after DPO "
                         f"vs {_pct(dpo['heldout.start_logprob_accuracy'])} at its Phase B start (p: McNemar)",
                         shown=dpo["heldout.preference_accuracy_ci_low"] > 0.5))
    else:
        rows.append(_missing(system, f"DPO held-out preference accuracy @{task}", f"metrics/train/dpo/{task}.json"))
    judge = _read(root, f"metrics/judge/{task}.json")
    if judge is None:
        rows.append(_missing(system, f"judge: questions vs the base's @{task}", f"metrics/judge/{task}.json"))
    else:
        rows.append(_row(system, f"judge: questions vs the base's @{task}",
                         f"{judge['wins']} wins, {judge['losses']} losses, {judge['ties']} ties of "
                         f"{judge['n_compared']} (both orders asked); position consistency "
                         f"{_pct(judge['position_consistency'])}",
                         _ci(judge.get("decisive_win_rate_ci_low"), judge.get("decisive_win_rate_ci_high")),
                         judge.get("sign_test_p"), f"judge picks the first shown {_pct(judge['judge_picks_first'])}; "
                         f"{judge['undecided']} replies undecided"))
    attribution = _read(root, f"metrics/attribution/{task}.json")
    if attribution is None:
        rows.append(_missing(system, f"IG completeness @{task}", f"metrics/attribution/{task}.json"))
    else:
        before, after = attribution["before_dpo"], attribution["after_dpo"]
        worst = max(before["median_relative_delta"], after["median_relative_delta"])
        # per question, both models: how many attributions are complete to the target, with its Wilson interval
        scores = root / f"attribution/{task}/scores.jsonl"
        errors = [r["relative_delta"] for r in read_jsonl(scores)] if scores.exists() else []
        within = sum(e < IG_TARGET for e in errors)
        interval = _ci(*wilson_interval(within, len(errors))) if errors else "-"
        rows.append(_row(system, f"IG completeness @{task}",
                         f"median relative completeness error, abs(sum of IG - (f(x) - f(x'))) / abs(f(x) - f(x')): "
                         f"{_pct(before['median_relative_delta'])} before DPO, {_pct(after['median_relative_delta'])} "
                         f"after (target < {_pct(IG_TARGET)}); {within} of {len(errors)} attributions within it "
                         f"(the interval is that share's)", interval, None,
                         f"draft share {_pct(before['draft_share'])} -> {_pct(after['draft_share'])}",
                         shown=worst < IG_TARGET))
    return rows


def transplant_checks(task: str, pairs: dict[str, dict], verified: dict) -> list[dict]:
    system, rows = "transplant", []
    r = verified.get(task, {}).get("transplant")
    if r is None:
        rows.append(_missing(system, f"verdict vs the argument @{task}", f"eval/transplant/{task}"))
    else:
        rows.append(_row(system, f"verdict vs the argument @{task}",
                         f"{_pct(r['accuracy'])} vs the argument's own {_pct(r['argument_correct_rate'])} "
                         f"({_pp(r['diff_vs_argument'])}; follows it {_pct(r['follows_argument_rate'])}, n={r['n']})",
                         _ci(r["diff_vs_argument_ci_low"], r["diff_vs_argument_ci_high"], points=True),
                         r["mcnemar_p_vs_argument"], "-"))
    rows.append(_pair_row(system, f"transplant vs no transplant @{task}",
                          pairs.get(f"transplant@{task} vs no_transplant@{task}"), f"transplant@{task}",
                          "masked (whom the argument backs hidden) vs none: " + _pair_text(
                              pairs.get(f"transplant_masked@{task} vs no_transplant@{task}"))))
    return rows


def needed_pairs(codi_tasks: list[str], markovian_tasks: list[str], transplant_tasks: list[str]) -> list[str]:
    """The paired comparisons the checks read, whatever compare.pairs lists."""
    out = []
    for t in markovian_tasks:
        out += [f"markovian@{t} vs markovian_base@{t}", f"non_markovian@{t} vs non_markovian_base@{t}"]
    for t in codi_tasks:
        out += [f"codi@{t} vs base_fewshot_cot@{t}", f"codi@{t} vs cot_sft@{t}"]
        if f"{t}_no_universe" in codi_tasks:
            out.append(f"codi@{t} vs codi@{t}_no_universe")
    for t in transplant_tasks:
        out += [f"transplant@{t} vs no_transplant@{t}", f"transplant_masked@{t} vs no_transplant@{t}"]
    return out


def mechanism_checks(root: str | Path, result: dict, pairs: dict[str, dict], verified: dict, table: dict,
                     dpo_tasks: list[str], codi_tasks: list[str], markovian_tasks: list[str],
                     transplant_tasks: list[str]) -> list[dict]:
    """Every system's rows, in the order compare.md shows them. `pairs` must hold `needed_pairs`'s comparisons."""
    root = Path(root)
    rows = []
    for t in markovian_tasks:
        rows += markovian_checks(root, t, pairs, table)
    for t in codi_tasks:
        if not t.endswith("_no_universe"):
            rows += codi_checks(root, t, f"{t}_no_universe" if f"{t}_no_universe" in codi_tasks else None, pairs)
    for t in dpo_tasks:
        rows += self_improving_checks(root, t, result)
    for t in transplant_tasks:
        rows += transplant_checks(t, pairs, verified)
    return rows


def mechanisms_markdown(rows: list[dict]) -> str:
    lines = ["## Mechanism checks", "",
             "Per system, the effect it exists for on a configuration sized so that a correct implementation shows it "
             f"(shown: p < {ALPHA}), its 95% interval and p-value (McNemar exact for paired accuracies, Spearman for "
             "the trend with Fisher's z interval, the sign test for the judge), and the ablation that should remove "
             "it. A gap is reported, not shown.", "",
             "| system | check | effect | 95% CI | p | ablation | shown |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        p = "-" if r["p"] is None else f"{r['p']:.3g}"
        shown = "-" if r["shown"] is None else ("yes" if r["shown"] else "no")
        lines.append(f"| {r['system']} | {r['check']} | {r['effect']} | {r['interval']} | {p} | {r['ablation']} | "
                     f"{shown} |")
    return "\n".join(lines) + "\n"
