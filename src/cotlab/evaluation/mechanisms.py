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
DRAFT_DROP = 0.03  # the source write-up's bar for the no-draft and shuffled-draft ablations: accuracy falls by >= 3 pp
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
         shown: bool | None = None, yardsticks: str = "-", why: str | None = None) -> dict:
    """`shown`: None = decided by p < ALPHA; a check with a rule of its own (IG's 5%, the accuracy yardsticks) passes
    its verdict, and `why` names the yardstick a row that is not shown failed."""
    shown = (p is not None and p < ALPHA) if shown is None else shown
    if why is None and not shown:
        why = "p >= 0.05" if p is not None else "below its bar"
    return {"system": system, "check": check, "effect": effect, "interval": interval, "p": p,
            "ablation": ablation, "yardsticks": yardsticks, "shown": shown, "why": None if shown else why}


def _missing(system: str, check: str, what: str) -> dict:
    return {"system": system, "check": check, "effect": f"not run: {what}", "interval": "-", "p": None,
            "ablation": "-", "yardsticks": "-", "shown": False, "why": "not run"}


def yardsticks(model: dict | None, trivial: dict | None, base: dict | None = None, base_name: str = "base") -> str:
    """The figures a reader holds an accuracy against: the base's, the task's trivial baselines, and the model's
    own most common answer (and the base's, when it is collapsed: a constant base is no yardstick)."""
    parts = []
    if base is not None:
        parts.append(f"{base_name} {_pct(base['accuracy'])}" + (
            f" (collapsed: {base['top_answer']} {_pct(base['top_share'])})" if base.get("collapsed") else ""))
    if trivial:
        if trivial.get("majority_accuracy") is not None:
            parts.append(f"majority ({trivial['majority_answer']}) {_pct(trivial['majority_accuracy'])}")
        if trivial.get("chance") is not None:
            parts.append(f"chance {_pct(trivial['chance'])}")
        if trivial.get("follow_argument_accuracy") is not None:
            parts.append(f"follow the argument {_pct(trivial['follow_argument_accuracy'])}")
    if model is not None and "top_share" in model:
        parts.append(f"top answer {model['top_answer']} {_pct(model['top_share'])}")
    return "; ".join(parts) or "-"


def accuracy_verdict(model: dict | None, diff: float | None, p: float | None, against: str = "the base"
                     ) -> tuple[bool, str | None]:
    """An accuracy effect is shown only when the model beats `against` (diff > 0, p < ALPHA), beats its task's
    strongest trivial baseline the same way, and is not collapsed; otherwise the reason names the yardstick."""
    if model is not None and model.get("collapsed"):
        return False, f"collapsed: {model['top_answer']} on {_pct(model['top_share'])} of rows"
    if diff is None or p is None or diff <= 0 or p >= ALPHA:
        return False, f"not above {against} (p={'-' if p is None else f'{p:.3g}'})"
    if model is not None and "baseline" in model and (model["diff_vs_baseline"] <= 0 or
                                                       model["p_vs_baseline"] >= ALPHA):
        return False, (f"not above the {model['baseline'].replace('_', ' ')} baseline "
                       f"({_pp(model['diff_vs_baseline'])}, p={model['p_vs_baseline']:.3g})")
    return True, None


def _pair_row(system: str, check: str, pairs: dict[str, dict], key: str, ablation: str, result: dict,
              trivial: dict) -> dict:
    """The paired accuracy comparison `key` ("model@task vs other@task") judged by `accuracy_verdict` against
    `other`, with its yardsticks."""
    pair = pairs.get(key)
    if pair is None or "missing" in pair:
        return _missing(system, check, ", ".join((pair or {}).get("missing", [key.split(" vs ")[0]])))
    (model, task), (other, other_task) = (side.split("@") for side in key.split(" vs "))
    row, against = result.get(task, {}).get(model), result.get(other_task, {}).get(other)
    effect = f"{_pct(pair['accuracy'])} vs {_pct(pair['against_accuracy'])} ({_pp(pair['diff'])}, n={pair['n']})"
    shown, why = accuracy_verdict(row, pair["diff"], pair["mcnemar_p"], f"{other}@{other_task}")
    return _row(system, check, effect, _ci(pair["ci_low"], pair["ci_high"], points=True), pair["mcnemar_p"], ablation,
                shown, yardsticks(row, trivial.get(task), against, other), why)


def _pair_text(pair: dict | None) -> str:
    if pair is None or "missing" in pair:
        return "not evaluated"
    return f"{_pp(pair['diff'])} (p={pair['mcnemar_p']:.3g})"


def _share(rows: list[dict], key: str) -> float:
    return sum(bool(r[key]) for r in rows) / len(rows)


def _paired_share_row(system: str, check: str, trained: list[dict], base: list[dict], key: str, what: str,
                      ablation: str, extra: str = "", chance: float | None = None) -> dict:
    """A per-question yes/no property (a CoT singles out the code, the code is the likeliest answer), the trained
    model against the base on the same questions: its Wilson interval, McNemar p, shown when higher at p < ALPHA
    (and, given `chance`, above it by an exact binomial test at p < ALPHA)."""
    by_id = {r["id"]: bool(r[key]) for r in base}
    mine = [bool(r[key]) for r in trained]
    k, n = sum(mine), len(mine)
    diff = k / n - sum(by_id.values()) / len(by_id)
    p = mcnemar_exact([by_id[r["id"]] for r in trained], mine)["p_value"]
    why = None if diff > 0 and p < ALPHA else f"not above the base ({_pp(diff)}, p={p:.3g})"
    if why is None and chance is not None:
        p_chance = stats.binomtest(k, n, chance).pvalue
        if k / n <= chance or p_chance >= ALPHA:
            why = f"not above chance {_pct(chance)} (p={p_chance:.3g})"
    return _row(system, check, f"{what}: {_pct(k / n)} vs base {_pct(sum(by_id.values()) / len(by_id))} "
                f"(n={n}){extra}", _ci(*wilson_interval(k, n)), p, ablation, why is None,
                yardsticks="-" if chance is None else f"chance {_pct(chance)}", why=why)


def markovian_checks(root: Path, task: str, pairs: dict[str, dict], table: dict, result: dict,
                     trivial: dict) -> list[dict]:
    """The reward trend, the two-stage accuracy (greedy, the reference's scoring) and, where the rows name the
    question's candidate codes, the candidate-choice accuracy (the gold code the likeliest of them, so a CoT cut
    mid-number cannot decide it) and whether the CoT singles out the asked code (it names it and none of the
    question's other codes; naming several raises the reward toward log(1/k) without telling the answerer which)."""
    system, rows = "markovian", []
    models = table.get(task, {})
    trained_rows, base_rows = models.get("markovian"), models.get("markovian_base")
    singles = bool(trained_rows and base_rows and "cot_singles_out" in trained_rows[0])
    shortcut = None  # the copy-several shortcut, when the trained CoTs name several codes where the base's did not
    if singles:
        several, base_several = (sum(r["cot_n_candidates"] >= 2 for r in rs) / len(rs) for rs in
                                 (trained_rows, base_rows))
        single_gain = _share(trained_rows, "cot_singles_out") - _share(base_rows, "cot_singles_out")
        if several > base_several and single_gain <= 0:
            shortcut = (f"the copy-several shortcut: {_pct(several)} of trained CoTs name >= 2 of the question's "
                        f"codes (base {_pct(base_several)}) while singling out did not rise ({_pp(single_gain)})")
    trained, ablation = (_read(root, f"metrics/train/{v}/{task}.json") for v in ("markovian", "non_markovian"))
    if trained is None:
        rows.append(_missing(system, f"reward trend @{task}", f"metrics/train/markovian/{task}.json"))
    else:
        abl = ("not run" if ablation is None else f"question shown (non_markovian): rho "
               f"{ablation['answer_logprob_trend_spearman']:+.2f}, p={ablation['answer_logprob_trend_p']:.3g}")
        p = trained["answer_logprob_trend_p"]
        rows.append(_row(system, f"reward trend @{task}",
                         f"gold-answer log-prob over {trained['steps']} steps: Spearman rho "
                         f"{trained['answer_logprob_trend_spearman']:+.2f} "
                         f"({trained['answer_logprob_first_quarter']:.2f} -> "
                         f"{trained['answer_logprob_last_quarter']:.2f}, first vs last quarter)",
                         _rho_ci(trained["answer_logprob_trend_spearman"], trained["steps"]), p, abl,
                         shown=p < ALPHA and trained["answer_logprob_trend_spearman"] > 0 and shortcut is None,
                         why=f"the reward rose through {shortcut}" if shortcut and p < ALPHA else None))
    rows.append(_pair_row(system, f"two-stage accuracy (greedy) @{task}", pairs,
                          f"markovian@{task} vs markovian_base@{task}", "non_markovian vs its base: " + _pair_text(
                              pairs.get(f"non_markovian@{task} vs non_markovian_base@{task}")), result, trivial))
    if trained_rows and base_rows and "answer_choice_correct" in trained_rows[0]:
        chance = sum(1 / len(r["candidate_logprobs"]) for r in trained_rows) / len(trained_rows) \
            if "candidate_logprobs" in trained_rows[0] else None
        rows.append(_paired_share_row(
            system, f"answer chosen among the question's codes @{task}", trained_rows, base_rows,
            "answer_choice_correct", "the gold code the likeliest of the question's codes after the CoT",
            "greedy two-stage accuracy above (the reference's scoring)", chance=chance))
    if singles:
        other = models.get("non_markovian")
        abl = ("not evaluated" if other is None else
               f"question shown (non_markovian): singles out {_pct(_share(other, 'cot_singles_out'))}")
        row = _paired_share_row(
            system, f"CoT singles out the answer @{task}", trained_rows, base_rows, "cot_singles_out",
            "CoTs that name the asked code and none of the question's other codes", abl,
            f"; carry it at all {_pct(_share(trained_rows, 'cot_contains_answer'))} vs base "
            f"{_pct(_share(base_rows, 'cot_contains_answer'))}")
        if shortcut and not row["shown"]:
            row["why"] = shortcut
        rows.append(row)
    elif trained_rows and base_rows and "cot_contains_answer" in trained_rows[0]:
        rows.append(_paired_share_row(
            system, f"CoT carries the answer @{task}", trained_rows, base_rows, "cot_contains_answer",
            "CoTs that spell out the gold answer (the task names no other candidates)",
            "question shown (non_markovian): " + ("not evaluated" if "non_markovian" not in models else
                                                  _pct(_share(models["non_markovian"], "cot_contains_answer")))))
    else:
        rows.append(_missing(system, f"CoT singles out the answer @{task}", f"eval/markovian/{task}"))
    return rows


def codi_checks(root: Path, task: str, without: str | None, pairs: dict[str, dict], result: dict,
                trivial: dict) -> list[dict]:
    system = "codi"
    rows = [_pair_row(system, f"CODI vs few-shot base @{task}", pairs, f"codi@{task} vs base_fewshot_cot@{task}",
                      "without the universe: " + (_pair_text(pairs.get(
                          f"codi@{without} vs base_fewshot_cot@{without}")) if without else "not run"),
                      result, trivial)]
    gap = _pair_row(system, f"gap to CoT-SFT @{task}", pairs, f"codi@{task} vs cot_sft@{task}", "-", result, trivial)
    codi, cot_sft = (_read(root, f"metrics/eval/{m}/{task}.json") for m in ("codi", "cot_sft"))
    if codi and cot_sft and codi.get("mean_new_tokens"):
        gap["ablation"] = (f"tokens generated: {codi['mean_new_tokens']:.1f} vs {cot_sft['mean_new_tokens']:.1f} "
                           f"({cot_sft['mean_new_tokens'] / codi['mean_new_tokens']:.1f}x fewer)")
    gap["shown"], gap["why"] = None, None  # a gap is reported, not an effect to show
    rows.append(gap)
    if without:
        rows.append(_pair_row(system, "universe effect", pairs, f"codi@{task} vs codi@{without}",
                              f"the universe removed from the prompt ({without})", result, trivial))
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


def self_improving_checks(root: Path, task: str, result: dict, trivial: dict) -> list[dict]:
    system, rows, models = "self_improving", [], result.get(task, {})
    for model, phase in (("cot_distill", "Phase B"), ("dpo", "Phase C")):
        r = models.get(model)
        if r is None or "diff_vs_ref" not in r:
            rows.append(_missing(system, f"{phase} vs base @{task}", f"eval/{model}/{task}"))
            continue
        ablations = [f"{m[4:]}: {_pp(a['diff_vs_full'])} (p={a['mcnemar_p_vs_full']:.3g})"
                     for m, a in models.items() if a.get("ablation_of") == model]
        shown, why = accuracy_verdict(r, r["diff_vs_ref"], r["mcnemar_p"])
        rows.append(_row(system, f"{phase} vs base @{task}",
                         f"{_pct(r['accuracy'])} vs {_pct(models['base_zeroshot']['accuracy'])} "
                         f"({_pp(r['diff_vs_ref'])}, invalid {_pct(r['invalid_rate'])}, n={r['n']})",
                         _ci(r["diff_ci_low"], r["diff_ci_high"], points=True), r["mcnemar_p"],
                         "; ".join(ablations) or "-", shown,
                         yardsticks(r, trivial.get(task), models["base_zeroshot"]), why))
    # Does Phase C read the draft? The source write-up's bar: removing or shuffling the draft costs >= 3 pp (here also p < ALPHA)
    drops = {m: models.get(f"dpo_{m}") for m in ("no_draft", "shuffled_draft")}
    if "dpo" in models and all(a is not None and "diff_vs_full" in a for a in drops.values()):
        no_draft, shuffled = drops["no_draft"], drops["shuffled_draft"]
        # a Phase C that gives one answer to everything, or no better than a trivial predictor, loses nothing
        # without its draft for that reason alone: the ablation can only mean something on a model that beats them
        full_ok, full_why = accuracy_verdict(models["dpo"], models["dpo"].get("diff_vs_baseline", 1.0),
                                             models["dpo"].get("p_vs_baseline", 0.0), "its strongest trivial baseline")
        drop_ok = all(a["diff_vs_full"] <= -DRAFT_DROP and a["mcnemar_p_vs_full"] < ALPHA for a in drops.values())
        rows.append(_row(system, f"the draft carries information @{task}",
                         f"Phase C without its draft {_pp(no_draft['diff_vs_full'])}, with another question's draft "
                         f"{_pp(shuffled['diff_vs_full'])} (p={shuffled['mcnemar_p_vs_full']:.3g}); bar: a drop of "
                         f">= {100 * DRAFT_DROP:.0f} pp", _ci(no_draft["diff_vs_full_ci_low"],
                                                          no_draft["diff_vs_full_ci_high"], points=True),
                         no_draft["mcnemar_p_vs_full"], "no_draft and shuffled_draft evaluations of the same model",
                         shown=full_ok and drop_ok, yardsticks=yardsticks(models["dpo"], trivial.get(task)),
                         why=None if full_ok and drop_ok else (f"Phase C itself: {full_why}" if not full_ok else
                                                               "a drop below the bar or p >= 0.05")))
    else:
        rows.append(_missing(system, f"the draft carries information @{task}", f"eval/dpo_no_draft/{task}"))
    dpo = _read(root, f"metrics/train/dpo/{task}.json") or {}
    if "heldout.preference_accuracy" in dpo:
        # The pairs' two sides share the teacher's template and differ only in the conclusion, so a preference is
        # learned from content. The implicit reward is 0 for a policy equal to its reference: shown when the interval
        # clears chance (50%). Beside it, per pair kind, the raw log-prob preference after DPO and at its Phase B start.
        kinds = sorted({k.split(".")[2] for k in dpo if k.startswith("heldout.by_made.")})
        per_kind = "; ".join(
            f"{kind} (n={dpo[f'heldout.by_made.{kind}.n_pairs']}): implicit "
            f"{_pct(dpo[f'heldout.by_made.{kind}.preference_accuracy'])}, log p "
            f"{_pct(dpo.get(f'heldout.by_made.{kind}.start_logprob_accuracy'))} -> "
            f"{_pct(dpo.get(f'heldout.by_made.{kind}.policy_logprob_accuracy'))}" for kind in kinds)
        # Shown only when the raw preference also rose from the start's (McNemar): a start that already prefers the
        # chosen side on (nearly) every pair leaves nothing to learn, and a margin that grows there shows no more
        # than that DPO ran.
        start, policy = dpo["heldout.start_logprob_accuracy"], dpo["heldout.policy_logprob_accuracy"]
        p_gain = dpo["heldout.logprob_accuracy_mcnemar_p"]
        why = None
        if dpo["heldout.preference_accuracy_ci_low"] <= 0.5:
            why = "the implicit-reward interval does not clear 50%"
        elif not (policy > start and p_gain < ALPHA):
            why = (f"the raw preference did not rise from the Phase B start's ({_pct(start)} -> {_pct(policy)}, "
                   f"p={p_gain:.3g})" + (": the start already prefers the chosen side, so these pairs cannot show "
                                         "a learned preference" if start >= 0.95 else ""))
        shown = why is None
        rows.append(_row(system, f"DPO held-out preference accuracy @{task}",
                         f"implicit reward of chosen > rejected on {_pct(dpo['heldout.preference_accuracy'])} of "
                         f"{dpo['heldout.n_pairs']} test pairs (sides in one template, differing in the conclusion)",
                         _ci(dpo["heldout.preference_accuracy_ci_low"], dpo["heldout.preference_accuracy_ci_high"]),
                         dpo["heldout.logprob_accuracy_mcnemar_p"],
                         f"log p(chosen) > log p(rejected): {_pct(dpo['heldout.policy_logprob_accuracy'])} after DPO "
                         f"vs {_pct(dpo['heldout.start_logprob_accuracy'])} at its Phase B start (p: McNemar)"
                         + (f"; by kind: {per_kind}" if per_kind else ""),
                         shown=shown, yardsticks=f"chance 50.0%; the Phase B start's log-prob preference "
                         f"{_pct(start)}", why=why))
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
                         f"{judge['undecided']} replies undecided",
                         # a trained model that drops the draft format asks nothing: no comparison, said as such
                         why=None if judge["n_compared"] else "nothing to judge: the challenger's drafts asked "
                         f"questions on {_pct(judge.get('challenger_question_rate'))} of "
                         f"{judge.get('challenger_drafts.n', '?')} questions (the base's: "
                         f"{_pct(judge.get('incumbent_question_rate'))})"))
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


def transplant_checks(task: str, pairs: dict[str, dict], verified: dict, result: dict, trivial: dict) -> list[dict]:
    system, rows = "transplant", []
    r = verified.get(task, {}).get("transplant")
    if r is None:
        rows.append(_missing(system, f"verdict vs the argument @{task}", f"eval/transplant/{task}"))
    else:
        model = result.get(task, {}).get("transplant")
        shown, why = accuracy_verdict(model, r["diff_vs_argument"], r["mcnemar_p_vs_argument"],
                                      "following the argument")
        rows.append(_row(system, f"verdict vs the argument @{task}",
                         f"{_pct(r['accuracy'])} vs the argument's own {_pct(r['argument_correct_rate'])} "
                         f"({_pp(r['diff_vs_argument'])}; follows it {_pct(r['follows_argument_rate'])}, n={r['n']})",
                         _ci(r["diff_vs_argument_ci_low"], r["diff_vs_argument_ci_high"], points=True),
                         r["mcnemar_p_vs_argument"], "-", shown, yardsticks(model, trivial.get(task)), why))
    rows.append(_pair_row(system, f"transplant vs no transplant @{task}", pairs,
                          f"transplant@{task} vs no_transplant@{task}",
                          "masked (whom the argument backs hidden) vs none: " + _pair_text(
                              pairs.get(f"transplant_masked@{task} vs no_transplant@{task}")), result, trivial))
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
                     transplant_tasks: list[str], trivial: dict | None = None) -> list[dict]:
    """Every system's rows, in the order compare.md shows them. `pairs` must hold `needed_pairs`'s comparisons;
    `trivial`, the tasks' trivial baselines (compare.baselines), and `result`, compare's per-model rows."""
    root, trivial = Path(root), trivial or {}
    rows = []
    for t in markovian_tasks:
        rows += markovian_checks(root, t, pairs, table, result, trivial)
    for t in codi_tasks:
        if not t.endswith("_no_universe"):
            rows += codi_checks(root, t, f"{t}_no_universe" if f"{t}_no_universe" in codi_tasks else None, pairs,
                                result, trivial)
    for t in dpo_tasks:
        rows += self_improving_checks(root, t, result, trivial)
    for t in transplant_tasks:
        rows += transplant_checks(t, pairs, verified, result, trivial)
    return rows


def mechanisms_markdown(rows: list[dict], scale_needed: dict[str, str] | None = None) -> str:
    """The mechanism table; `scale_needed` (system -> text) lists the systems this run sizes only to exercise their
    stages, with the scale their effect needs, so their rows are read as smoke tests, not as evidence."""
    lines = ["## Mechanism checks", "",
             "Per system, the effect it exists for on a configuration sized so that a correct implementation shows it, "
             "its 95% interval and p-value (McNemar exact for paired accuracies, Spearman for the trend with Fisher's "
             "z interval, the sign test for the judge), the ablation that should remove it, and the yardsticks it is "
             f"held against. An accuracy effect is shown only when the model beats the base and the task's strongest "
             f"trivial baseline (majority class of the train split, chance, following the argument) at p < {ALPHA} "
             "and is not collapsed (one answer on >= 90% of the rows); a row that is not shown names the yardstick it "
             "failed. A gap is reported, not shown.", "",
             "| system | check | effect | 95% CI | p | ablation | yardsticks | shown |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        p = "-" if r["p"] is None else f"{r['p']:.3g}"
        shown = "-" if r["shown"] is None else ("yes" if r["shown"] else f"no: {r['why']}" if r.get("why") else "no")
        lines.append(f"| {r['system']} | {r['check']} | {r['effect']} | {r['interval']} | {p} | {r['ablation']} | "
                     f"{r.get('yardsticks', '-')} | {shown} |")
    needed = [f"- **{system}**: {text}" for system, text in (scale_needed or {}).items()
              if any(r["system"] == system for r in rows)]
    if needed:
        lines += ["", "Run at the smallest size that exercises every stage, not at the scale the effect needs "
                      "(a \"no\" in these rows is no evidence against the method):", *needed]
    return "\n".join(lines) + "\n"
