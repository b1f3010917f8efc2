"""The whole DAG through DVC at tiny scale (tests/dag.py): every stage's outputs, its MLflow run, a no-op re-run, and
every training stage re-run from its command in a copy. Experiments on it (temp and queued) are in
test_pipeline_experiments.py, which the other xdist worker takes."""
import csv
import json
import math
import re
import sys
import time
from pathlib import Path

import mlflow
import pytest
from ruamel.yaml import YAML

from cotlab.selfimprove.ablations import shuffled as shuffled_drafts
from dag import runs, sh, shared_dag

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def repo(tmp_path_factory, worker_id):
    """The session's tiny DAG (tests/dag.py), read-only here."""
    return shared_dag(tmp_path_factory, worker_id)


def dvc_stages(root) -> set[str]:
    from dvc.repo import Repo

    with Repo(str(root)) as repo:  # the names `dvc repro` prints (addressing is relative to the cwd)
        return {stage.name for stage in repo.index.stages}


def test_whole_dag_at_tiny_scale(repo):
    root = repo["root"]
    compare = json.loads((root / "metrics" / "compare.json").read_text())
    assert set(compare["strategyqa"]) == {"base_zeroshot", "base_fewshot", "sft", "cot_distill", "dpo", "dpo_no_draft",
                                          "dpo_shuffled_draft", "dpo_no_cot", "round1"}
    assert 0 <= compare["strategyqa"]["sft"]["mcnemar_p"] <= 1
    predictions = (root / "eval" / "sft" / "strategyqa" / "predictions.jsonl").read_text().splitlines()
    assert len(predictions) == compare["strategyqa"]["sft"]["n"]
    manifest = json.loads((root / "models" / "cot_distill" / "strategyqa" / "manifest.json").read_text())
    assert manifest["init_from"] == "models/sft/strategyqa" and manifest["prompt"]["template"] == "cot"
    # the accuracy rows + the ablations table + the trivial baselines table
    assert (root / "reports" / "compare.md").read_text().count("| strategyqa |") == 9 + 3 + 1
    stages = {r.data.tags["stage"] for r in runs(root)}
    assert {"prepare_model", "data@strategyqa", "drafts@strategyqa", "teacher@strategyqa", "filter@strategyqa",
            "candidates@svamp", "sft@strategyqa", "cot_distill@strategyqa", "pairs@strategyqa", "dpo@strategyqa",
            "eval_dpo@strategyqa", "attribution@strategyqa", "judge@strategyqa", "self_guided@round1",
            "compare"} <= stages
    # No NaN or Infinity in any metrics file: undefined values are null (DVC, jq and JSON parsers refuse NaN).
    bad = [p.relative_to(root).as_posix() for p in (root / "metrics").rglob("*.json")
           if re.search(r"\b(NaN|-?Infinity)\b", p.read_text())]
    assert not bad, bad
    for system in ("self_improving", "codi", "markovian", "transplant"):
        summary = json.loads((root / "metrics" / "summary" / f"{system}.json").read_text())
        assert set(summary) == {"pp", "effects", "accuracy", "baselines"}
    headline = json.loads((root / "metrics/summary/self_improving.json").read_text())["pp"]
    assert headline["dpo_sqa"] == round(100 * compare["strategyqa"]["dpo"]["diff_vs_ref"], 1)
    assert headline["dpo"] is None  # hidden_fact is not a task of the tiny run: null, never NaN
    assert {p.name for p in (root / "reports" / "figures").glob("*.png")} >= {"accuracy.png", "training_loss.png"}
    assert "![Accuracy per task" in (root / "reports" / "compare.md").read_text()
    # Each stage ends with one line giving its wall time; long steps show tqdm bars with counts.
    log = repo["repro_log"]
    for stage in ("prepare_model", "data strategyqa", "train sft strategyqa", "evaluate dpo strategyqa", "compare"):
        assert re.search(rf"cotlab: {stage} done in \d+\.\d s", log), stage
    assert re.search(r"dpo_no_draft: 100%\|.*\| 12/12", log) and "drafts: 100%" in log


def test_mlflow_has_one_run_per_stage_named_as_dvc_names_it(repo):
    """Every stage of the tiny DAG ran once: its top-level MLflow run carries DVC's own address of the stage (nested
    runs, self_guided's one per task, sit under it), in an experiment that MLflow's UI opens on its runs table."""
    root = repo["root"]
    top = [r for r in runs(root) if "mlflow.parentRunId" not in r.data.tags]
    names = sorted(r.info.run_name for r in top)
    assert names == sorted(dvc_stages(root)), set(names) ^ dvc_stages(root)
    assert all(r.data.tags["stage"] == r.info.run_name for r in top)
    children = [r for r in runs(root) if "mlflow.parentRunId" in r.data.tags]
    assert sorted(r.info.run_name for r in children) == ["self_guided@round1/strategyqa"]
    client = mlflow.tracking.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    assert client.get_experiment_by_name("cotlab").tags["mlflow.experimentKind"] == "custom_model_development"


def test_codi_stages_train_evaluate_latently_probe_and_pair_with_and_without_the_universe(repo):
    root = repo["root"]
    read = lambda rel: [json.loads(line) for line in (root / rel).read_text().splitlines()]  # noqa: E731
    manifest = json.loads((root / "models/codi/personal_relations/manifest.json").read_text())
    assert manifest["method"] == "codi" and set(manifest["token_ids"]) == {"bot", "eot", "pad"}
    assert set(manifest["extra_modules"]) == {"projection", "added_embeddings"}
    curve = (root / "plots/train/codi/personal_relations.csv").read_text().splitlines()
    header = curve[0].split(",")
    assert {"loss", "ce_student", "ce_teacher", "distill", "latent_norm"} <= set(header)
    assert all(math.isfinite(float(v)) for row in curve[1:] for v in row.split(",")[2:])
    with_universe, without = read("eval/codi/personal_relations/predictions.jsonl"), read(
        "eval/codi/personal_relations_no_universe/predictions.jsonl")
    assert [p["id"] for p in with_universe] == [p["id"] for p in without] and len(without) == 12
    # The same questions: only the universe's facts differ between the two prompts.
    assert all(a["gold"] == b["gold"] for a, b in zip(with_universe, without))
    assert all(p["n_new_tokens"] <= 16 and "<bot>" in p["prompt"] for p in with_universe)
    for name in ("cot_sft", "base_fewshot_cot"):
        assert len(read(f"eval/{name}/personal_relations/predictions.jsonl")) == 12
    pairs = json.loads((root / "metrics/compare.json").read_text())["pairs"]
    universe = pairs["codi@personal_relations vs codi@personal_relations_no_universe"]
    assert universe["n"] == 12 and 0 <= universe["mcnemar_p"] <= 1
    assert pairs["codi@personal_relations vs cot_sft@personal_relations"]["n"] == 12
    assert pairs["codi@gsm8k vs cot_sft@gsm8k"] == {"missing": ["codi@gsm8k", "cot_sft@gsm8k"]}
    report = (root / "reports/compare.md").read_text()
    assert "## Paired comparisons" in report and "not evaluated: codi@gsm8k" in report
    probe = read("reports/codi_probe/personal_relations/probe.jsonl")
    assert len(probe) == 12 and all(len(row["thoughts"]) == 6 for row in probe)  # every test question (12 < 32)
    assert all(len(t["tokens"]) == 5 and t["probs"] == sorted(t["probs"], reverse=True)
               for row in probe for t in row["thoughts"])
    assert "| 6 |" in (root / "reports/codi_probe/personal_relations/probe.md").read_text()
    stages = {r.data.tags["stage"] for r in runs(root)}
    assert {"codi@personal_relations", "cot_sft@personal_relations", "eval_codi@personal_relations_no_universe",
            "codi_data@personal_relations"} <= stages


def test_markovian_stages_train_with_monitors_and_evaluate_two_stage_against_the_base(repo):
    root = repo["root"]
    read = lambda rel: [json.loads(line) for line in (root / rel).read_text().splitlines()]  # noqa: E731
    for variant in ("markovian", "non_markovian"):
        manifest = json.loads((root / f"models/{variant}/lockers/manifest.json").read_text())
        assert manifest["method"] == variant and manifest["markovian"]["markovian"] == (variant == "markovian")
        rows = list(csv.DictReader((root / f"plots/train/{variant}/lockers.csv").open()))
        assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
        for key in ("answer_logprob", "reward", "advantage_std", "kl", "entropy", "repetition", "ppo_ratio_mean",
                    "ppo_ratio_max", "clip_fraction", "grad_norm"):
            assert all(math.isfinite(float(r[key])) for r in rows), key
        evals = list(csv.DictReader((root / f"plots/train/{variant}/lockers_eval.csv").open()))
        assert [int(r["step"]) for r in evals] == [0, 2, 4]
        state = json.loads((root / f".cotlab-cache/checkpoints/{variant}/lockers/latest/state.json").read_text())
        assert state["step"] == 4  # the resume point of the next run
    test = read("data/markovian/lockers/test.jsonl")
    for name in ("markovian", "markovian_base", "non_markovian", "non_markovian_base"):
        predictions = read(f"eval/{name}/lockers/predictions.jsonl")
        assert [p["id"] for p in predictions] == [ex["id"] for ex in test]
        for p, ex in zip(predictions, test):
            assert (ex["question"] in p["answer_prompt"]) == name.startswith("non_markovian")
            assert {"pred_anchored", "pred_simple", "answer_logprob", "cot"} <= set(p)
        metrics = json.loads((root / f"metrics/eval/{name}/lockers.json").read_text())
        assert {"accuracy_anchored", "accuracy_simple", "answer_logprob", "cot_contains_answer"} <= set(metrics)
        assert metrics["cot_contains_answer"] == sum(p["cot_contains_answer"] for p in predictions) / len(test)
    trained = json.loads((root / "metrics/eval/markovian/lockers.json").read_text())
    assert 0 <= trained["answer_logprob_vs_base_wilcoxon_p"] <= 1
    assert trained["answer_logprob_vs_base_ci_low"] <= trained["answer_logprob_vs_base"] <= trained[
        "answer_logprob_vs_base_ci_high"]
    pairs = json.loads((root / "metrics/compare.json").read_text())["pairs"]
    for pair in ("markovian@lockers vs markovian_base@lockers", "markovian@lockers vs non_markovian@lockers"):
        assert pairs[pair]["n"] == len(test) and 0 <= pairs[pair]["mcnemar_p"] <= 1
    stages = {r.data.tags["stage"] for r in runs(root)}
    mechanisms = json.loads((root / "metrics/mechanisms.json").read_text())
    assert {r["system"] for r in mechanisms.values()} == {"markovian", "codi", "self_improving", "transplant"}
    singled = mechanisms["markovian.CoT singles out the answer @lockers"]  # lockers' rows name the question's codes
    assert f"n={len(test)}" in singled["effect"] and 0 <= singled["p"] <= 1 and "carry it at all" in singled["effect"]
    assert "markovian.answer chosen among the question's codes @lockers" in mechanisms
    for r in mechanisms.values():  # a row that is not shown names why
        assert r["shown"] in (True, None) or r["why"], r
    assert (root / "reports/compare.md").read_text().startswith("# Comparison\n\n## Mechanism checks")
    expected = {"markovian@markovian-lockers", "markovian@non_markovian-lockers", "eval_markovian@lockers"}
    assert expected <= stages and expected <= dvc_stages(root)  # MLflow names the runs as DVC names the stages


def test_transplant_stages_train_with_curves_and_pair_with_their_controls(repo):
    root = repo["root"]
    read = lambda rel: [json.loads(line) for line in (root / rel).read_text().splitlines()]  # noqa: E731
    test = read("data/candidates/svamp/test.jsonl")
    for variant in ("transplant", "transplant_masked", "no_transplant"):
        manifest = json.loads((root / f"models/{variant}/svamp/manifest.json").read_text())
        assert manifest["method"] == variant and manifest["transplant"]["masked"] == (variant == "transplant_masked")
        assert manifest["transplant"]["transplant"] == (variant != "no_transplant")
        steps = list(csv.DictReader((root / f"plots/train/{variant}/svamp.csv").open()))
        assert [int(r["step"]) for r in steps] == [1, 2, 3, 4] and all(math.isfinite(float(r["loss"])) for r in steps)
        curves = list(csv.DictReader((root / f"plots/train/{variant}/svamp_curves.csv").open()))
        assert [int(r["step"]) for r in curves] == [0, 2, 4]
        for split in ("train", "test"):
            for key in ("accuracy", "argument_correct_rate", "follows_argument_rate"):
                assert all(0 <= float(r[f"{split}_{key}"]) <= 1 for r in curves), (variant, split, key)
        predictions = read(f"eval/{variant}/svamp/predictions.jsonl")
        assert [p["id"] for p in predictions] == [r["id"] for r in test]
        assert all(p["argument_correct"] == r["argument_correct"] for p, r in zip(predictions, test))
    compare = json.loads((root / "metrics/compare.json").read_text())
    verified = compare["transplant"]["svamp"]
    assert set(verified) == {"transplant", "transplant_masked", "no_transplant"}
    base_rate = sum(r["argument_correct"] for r in test) / len(test)
    assert all(v["argument_correct_rate"] == base_rate and 0 <= v["mcnemar_p_vs_argument"] <= 1
               for v in verified.values())
    for pair in ("transplant@svamp vs no_transplant@svamp", "transplant@svamp vs transplant_masked@svamp"):
        assert compare["pairs"][pair]["n"] == len(test) and 0 <= compare["pairs"][pair]["mcnemar_p"] <= 1
    assert {"transplant", "transplant_masked", "no_transplant"} <= set(compare["svamp"])
    report = (root / "reports/compare.md").read_text()
    assert "## Transplant verification" in report and report.count("| svamp | transplant") >= 2
    stages = {r.data.tags["stage"] for r in runs(root)}
    expected = {"candidates@svamp", "transplant@transplant-svamp", "transplant@transplant_masked-svamp",
                "transplant@no_transplant-svamp"}
    assert expected <= stages and expected <= dvc_stages(root)


def test_phase_c_and_its_validations(repo):
    """Phase B and C read the student's drafts; the ablations change only what they claim to; attribution, the
    judge and the self-guided round leave their outputs and metrics."""
    root = repo["root"]
    read = lambda rel: [json.loads(line) for line in (root / rel).read_text().splitlines()]  # noqa: E731
    test_drafts = {r["id"]: r["draft"] for r in read("data/drafts/strategyqa/test.jsonl")}
    for model in ("cot_distill", "dpo"):
        manifest = json.loads((root / "models" / model / "strategyqa" / "manifest.json").read_text())
        assert manifest["prompt"]["with_draft"] is True
        for p in read(f"eval/{model}/strategyqa/predictions.jsonl"):
            assert f"Student draft: {' '.join(test_drafts[p['id']].split()) or '(empty)'}" in p["prompt"]
    assert json.loads((root / "models/dpo/strategyqa/manifest.json").read_text())["init_from"] == \
        "models/cot_distill/strategyqa"
    full = {p["id"]: p for p in read("eval/dpo/strategyqa/predictions.jsonl")}
    no_draft = read("eval/dpo_no_draft/strategyqa/predictions.jsonl")
    shuffled = read("eval/dpo_shuffled_draft/strategyqa/predictions.jsonl")
    no_cot = read("eval/dpo_no_cot/strategyqa/predictions.jsonl")
    assert {p["id"] for p in no_draft} == {p["id"] for p in shuffled} == {p["id"] for p in no_cot} == set(full)
    assert all("Student draft:" not in p["prompt"] for p in no_draft)
    shown = shuffled_drafts([test_drafts[p["id"]] for p in shuffled], seed=0)  # predictions keep the test order
    assert all(f"Student draft: {' '.join(d.split()) or '(empty)'}" in p["prompt"] for p, d in zip(shuffled, shown))
    assert all(p["prompt"] == full[p["id"]]["prompt"] + "The answer is:" for p in no_cot)
    compare = json.loads((root / "metrics" / "compare.json").read_text())["strategyqa"]
    assert compare["dpo_no_draft"]["ablation_of"] == "dpo" and 0 <= compare["dpo_no_draft"]["mcnemar_p_vs_full"] <= 1

    pairs = json.loads((root / "metrics/pairs/strategyqa.json").read_text())
    assert pairs["n_pairs"] == 8 and pairs.get("made.draft_wrong", 0) + pairs.get("made.flipped", 0) == 8
    trained = json.loads((root / "metrics/train/dpo/strategyqa.json").read_text())
    assert trained["n_pairs"] == 8 and math.isfinite(trained["train_loss"])
    assert pairs["test.n_pairs"] == trained["heldout.n_pairs"] == len(read("data/pairs/strategyqa/test.jsonl")) > 0
    assert 0 <= trained["heldout.preference_accuracy"] <= 1 and 0 <= trained["heldout.start_logprob_accuracy"] <= 1
    curve = (root / "plots/train/dpo/strategyqa.csv").read_text().splitlines()
    assert curve[0].startswith("step,epoch,loss,beta") and len(curve) == 1 + 4  # 4 epochs of one batch
    attribution = json.loads((root / "metrics/attribution/strategyqa.json").read_text())
    for when in ("before_dpo", "after_dpo"):
        assert attribution[when]["n"] == 3 and 0 <= attribution[when]["draft_share"] <= 1
        assert 0 <= attribution[when]["draft_share_per_token"] <= 1 and attribution[when]["median_relative_delta"] >= 0
    assert attribution["criterion_met"] == (attribution["after_dpo"]["draft_share"] >= 0.2)
    assert len(read("attribution/strategyqa/scores.jsonl")) == 6
    judge = json.loads((root / "metrics/judge/strategyqa.json").read_text())
    verdicts = read("judge/strategyqa/verdicts.jsonl")  # every question judged in both orders
    assert judge["challenger"] == "dpo" and 2 * judge["n_compared"] == len(verdicts)
    assert [v["challenger_label"] for v in verdicts] == ["A", "B"] * judge["n_compared"]
    assert judge["wins"] + judge["losses"] + judge["ties"] == judge["n_compared"]
    assert len(read("judge/strategyqa/challenger_drafts.jsonl")) == len(full)
    rounds = json.loads((root / "metrics/rounds/round1.json").read_text())["strategyqa"]
    assert rounds["start"] == "dpo" and rounds["pairs"]["n_pairs"] == 8 and rounds["eval"]["n"] == len(full)
    assert json.loads((root / "models/round1/strategyqa/manifest.json").read_text())["init_from"] == \
        "models/dpo/strategyqa"
    assert len(read("data/rounds/round1/strategyqa/drafts_test.jsonl")) == len(full)


def test_training_consumes_the_filtered_teacher_data(repo):
    root = repo["root"]
    filtered = json.loads((root / "metrics/filter/strategyqa.json").read_text())
    assert filtered["teacher_agreement_rate"] == 1.0  # the oracle is exact
    assert filtered["share_after.yes"] == filtered["share_after.no"] == 0.5  # upsampled by default
    assert filtered["share_before.yes"] != 0.5 and filtered["n_out"] > filtered["kept"]
    for method in ("sft", "cot_distill"):
        trained = json.loads((root / f"metrics/train/{method}/strategyqa.json").read_text())
        assert trained["n_examples"] + trained["n_dropped_too_long"] == filtered["n_out"]
    rows = [json.loads(line) for line in (root / "data/filtered/strategyqa/train.jsonl").read_text().splitlines()]
    assert all(r["metadata"]["teacher_answer"] == r["answer"] and r["reasoning"] for r in rows)
    teacher = json.loads((root / "metrics/teacher/strategyqa.json").read_text())
    assert teacher["usage.answered"] + teacher["usage.failed"] == teacher["usage.requests"] > 0
    shown = sh(root, "dvc", "metrics", "show")
    assert "share_after.yes" in shown and "usage.requests" in shown and "teacher_agreement_rate" in shown
    candidates = json.loads((root / "metrics/candidates/svamp.json").read_text())  # though tasks lists strategyqa
    assert candidates["train.kept"] > 0 and candidates["test.kept"] > 0


def test_repro_after_a_finished_run_does_nothing(repo):
    started = time.time()
    out = sh(repo["root"], "dvc", "repro")
    assert "Data and pipelines are up to date" in out
    assert time.time() - started < 30


# Every training stage, with the checkpoint it writes and its metrics file.
TRAINING_STAGES = {
    "sft": (["train.py", "sft", "strategyqa"], "sft/strategyqa"),
    "cot_distill": (["train.py", "cot_distill", "strategyqa"], "cot_distill/strategyqa"),
    "dpo": (["dpo.py", "strategyqa"], "dpo/strategyqa"),
    "codi": (["codi.py", "personal_relations"], "codi/personal_relations"),
    "cot_sft": (["train.py", "cot_sft", "personal_relations"], "cot_sft/personal_relations"),
    "markovian": (["markovian.py", "lockers", "markovian"], "markovian/lockers"),
    "transplant": (["transplant.py", "svamp", "transplant"], "transplant/svamp"),
}
# Wall-clock figures in the metrics, the one thing a re-run may change (markovian's share_* split its time).
TIMING = re.compile(r"runtime|seconds|_s$|^share_(sample|score|update)$")


def weights(root: Path, checkpoint: str) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in sorted((root / "models" / checkpoint).glob("*.safetensors"))}


def untimed_metrics(root: Path, checkpoint: str) -> dict:
    metrics = json.loads((root / "metrics" / "train" / f"{checkpoint}.json").read_text())
    return {k: v for k, v in metrics.items() if not TIMING.search(k)}


def test_every_training_stage_is_a_function_of_its_params_and_seed(repo, tmp_path):
    """Re-running each training stage's command on the repro's inputs gives bit-identical weights and metrics;
    with another `seed`, different weights. Upstream stages first, in two parallel lanes (2 cores)."""
    import shutil
    from concurrent.futures import ThreadPoolExecutor

    root = shutil.copytree(repo["root"], tmp_path / "copy", ignore=shutil.ignore_patterns("cache", "mlruns", ".git"))
    before = {name: (weights(root, ckpt), untimed_metrics(root, ckpt)) for name, (_, ckpt) in TRAINING_STAGES.items()}
    lanes = [["sft", "cot_distill", "dpo"], ["codi", "cot_sft", "markovian", "transplant"]]  # each reads the one before

    def run_lane(lane):
        for name in lane:
            if name == "markovian":  # it would resume its finished run (same fingerprint) and train nothing
                shutil.rmtree(root / ".cotlab-cache" / "checkpoints", ignore_errors=True)
            sh(root, sys.executable, f"stages/{TRAINING_STAGES[name][0][0]}", *TRAINING_STAGES[name][0][1:])

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(run_lane, lanes))
    for name, (_, ckpt) in TRAINING_STAGES.items():
        assert before[name][0], f"{name}: no weights in models/{ckpt}"
        assert weights(root, ckpt) == before[name][0], f"{name}: a re-run with the same params trained other weights"
        assert untimed_metrics(root, ckpt) == before[name][1], f"{name}: a re-run gave other metrics"

    yaml = YAML()
    params = yaml.load(root / "params.yaml")
    params["seed"] = params["seed"] + 1
    yaml.dump(params, root / "params.yaml")
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(run_lane, lanes))
    same = [name for name, (_, ckpt) in TRAINING_STAGES.items() if weights(root, ckpt) == before[name][0]]
    assert not same, f"another seed trained the same weights: {same}"
