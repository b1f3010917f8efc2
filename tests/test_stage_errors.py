"""Stage scripts fail with one clear paragraph, exit status 2, and no output that looks complete."""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_stage(cwd, *args):
    return subprocess.run([sys.executable, str(ROOT / "stages" / args[0]), *args[1:]], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def params_with(tmp_path, old="", new=""):
    # the tests below run StrategyQA's stages (a vendored task), which the demo leaves one `-S tasks=...` away
    text = (ROOT / "params.yaml").read_text().replace("scale: demo", "scale: tiny").replace(
        "\ntasks: [hidden_fact]\n", "\ntasks: [strategyqa]\n", 1).replace("  tasks: [hidden_fact] # Phase C",
                                                                       "  tasks: [strategyqa] # Phase C", 1)
    assert text.count("tasks: [strategyqa]") == 2, "params.yaml's tasks lines changed: update this helper"
    (tmp_path / "params.yaml").write_text(text.replace(old, new, 1))


def test_unknown_param_names_the_key(tmp_path):
    """A stage parses its own sections first: a typo in sft stops sft@ before it loads anything, and the check of
    every section (`make repro` runs it before DVC) names it too, before any stage."""
    params_with(tmp_path, "  batch_size: 8\n", "  batch_sise: 8\n")
    result = run_stage(tmp_path, "train.py", "sft", "strategyqa")
    assert result.returncode == 2
    assert "sft.batch_sise: unknown param" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "models").exists()
    check = subprocess.run([sys.executable, "-m", "cotlab.sections", str(tmp_path / "params.yaml")],
                           capture_output=True, text=True)
    assert check.returncode == 2 and "sft.batch_sise: unknown param" in check.stderr


def test_malformed_jsonl_row_names_the_file_and_row(tmp_path):
    params_with(tmp_path)
    task = tmp_path / "data" / "filtered" / "strategyqa"  # what training reads
    task.mkdir(parents=True)
    good = {"id": "a", "question": "Is it?", "answer": "yes", "answer_type": "yes_no"}
    (task / "train.jsonl").write_text(json.dumps(good) + "\n" + json.dumps(good) + "\n{not json\n")
    result = run_stage(tmp_path, "train.py", "sft", "strategyqa")
    assert result.returncode == 2
    assert "train.jsonl: row 3 is not valid JSON" in result.stderr
    assert not (tmp_path / "models").exists() and not (tmp_path / "metrics").exists()


def test_missing_data_file_and_missing_model(tmp_path):
    params_with(tmp_path)
    result = run_stage(tmp_path, "train.py", "sft", "strategyqa")
    assert result.returncode == 2 and "data file not found: data/filtered/strategyqa/train.jsonl" in result.stderr
    task = tmp_path / "data" / "tasks" / "strategyqa"
    task.mkdir(parents=True)
    shutil.copy(ROOT / "tests" / "data" / "tiny.jsonl", task / "test.jsonl")
    result = run_stage(tmp_path, "evaluate.py", "sft", "strategyqa")
    assert result.returncode == 2 and "models/sft/strategyqa: no manifest.json" in result.stderr


def test_an_unreachable_hub_model_fails_at_once_naming_the_key(tmp_path, monkeypatch):
    """Offline, a Hugging Face id is looked up in offline mode: the error comes at once (it took 56 s of retries),
    and names model.name. On a machine that reaches the hub, the unknown id fails as fast with the hub's 404."""
    import huggingface_hub.constants

    from cotlab import hub
    from cotlab.errors import ModelLoadError
    from cotlab.models import _load_source

    for name in hub.OFFLINE_VARIABLES:
        monkeypatch.delenv(name, raising=False)  # restored after the test, whatever offline_unless_reachable sets
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", huggingface_hub.constants.HF_HUB_OFFLINE)
    import transformers  # noqa: F401 (imported before the clock starts: the import is not the lookup)

    started = time.perf_counter()
    offline = hub.offline_unless_reachable()
    with pytest.raises(ModelLoadError, match="model.name: cannot load 'nobody/nothing'"):
        _load_source("nobody/nothing", None, 0)
    elapsed = time.perf_counter() - started
    assert elapsed < 5, f"the hub error took {elapsed:.1f} s (offline: {offline})"
    if offline:
        assert os.environ["HF_HUB_OFFLINE"] == "1" and huggingface_hub.constants.HF_HUB_OFFLINE is True
    params_with(tmp_path, "model:\n  name: auto", "model:\n  name: nobody/nothing")
    result = run_stage(tmp_path, "prepare_model.py")
    assert result.returncode == 2 and "model.name: cannot load 'nobody/nothing'" in result.stderr
    assert not (tmp_path / "models").exists()


def test_filter_names_a_malformed_teacher_row_and_writes_nothing(tmp_path):
    params_with(tmp_path)
    good = {"id": "a", "question": "Is it?", "answer": "yes", "answer_type": "yes_no"}
    for folder, text in [("tasks", json.dumps(good)), ("drafts", json.dumps({"id": "a", "draft": ""})),
                         ("teacher", json.dumps({"id": "a", "status": "ok", "text": ""}) + "\n{broken")]:
        (tmp_path / "data" / folder / "strategyqa").mkdir(parents=True)
        (tmp_path / "data" / folder / "strategyqa" / "train.jsonl").write_text(text + "\n")
    result = run_stage(tmp_path, "filter.py", "strategyqa")
    assert result.returncode == 2
    assert "data/teacher/strategyqa/train.jsonl: row 2 is not valid JSON" in result.stderr
    assert not (tmp_path / "data" / "filtered").exists() and not (tmp_path / "metrics").exists()


def test_empty_split_is_an_error(tmp_path):
    params_with(tmp_path, "  strategyqa: {source: strategyqa, test_fraction: 0.2}",
                "  strategyqa: {source: local, path: empty.jsonl, answer_type: yes_no}")
    (tmp_path / "empty.jsonl").write_text("")
    result = run_stage(tmp_path, "data.py", "strategyqa")
    assert result.returncode == 2 and "empty" in result.stderr.lower()
    assert not (tmp_path / "data" / "tasks" / "strategyqa" / "train.jsonl").exists()


def test_a_stage_that_fails_half_way_leaves_none_of_its_outputs(tmp_path, tiny_base):
    """drafts@ writes the train split's drafts, then fails on the test split (its file is missing): under a real
    `dvc repro`, the train drafts it had written are removed with the rest, so nothing half-written remains."""
    from conftest import copy_project

    copy_project(tmp_path)
    params_with(tmp_path)
    shutil.copytree(tiny_base, tmp_path / "models" / "base")
    task = tmp_path / "data" / "tasks" / "strategyqa"
    task.mkdir(parents=True)
    shutil.copy(ROOT / "tests" / "data" / "tiny.jsonl", task / "train.jsonl")  # and no test.jsonl
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "MLFLOW_TRACKING_URI": ""}
    for cmd in (["git", "init", "-q"], ["dvc", "repro", "--single-item", "drafts@strategyqa"]):
        result = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode != 0
    assert "data/tasks/strategyqa/test.jsonl" in result.stderr  # the failure, named
    assert "removed the outputs it had written: data/drafts/strategyqa" in result.stderr
    assert not (tmp_path / "data" / "drafts" / "strategyqa").exists()
    assert not (tmp_path / "metrics" / "drafts" / "strategyqa.json").exists()
    assert (task / "train.jsonl").exists()  # its inputs untouched


def test_outputs_a_failed_run_never_reached_are_left_as_they_were(tmp_path, monkeypatch):
    from cotlab.stage import remove_partial_outputs

    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / name, tmp_path / name)
    monkeypatch.chdir(tmp_path)
    old, new = Path("metrics/drafts/hidden_fact.json"), Path("data/drafts/hidden_fact/train.jsonl")
    old.parent.mkdir(parents=True)
    old.write_text("{}")
    started = time.time() + 1e-3
    time.sleep(0.01)
    new.parent.mkdir(parents=True)
    new.write_text("")
    assert remove_partial_outputs(["stages/drafts.py", "hidden_fact"], started) == ["data/drafts/hidden_fact"]
    assert old.exists() and not new.parent.exists()
    assert remove_partial_outputs(["stages/drafts.py", "no_such_task"], 0.0) == []


def test_unknown_stage_arguments_name_the_argument(tmp_path):
    params_with(tmp_path)
    cases = [(("data.py", "nosuchtask"), "argument TASK: 'nosuchtask' is not a task (task_specs defines: aqua,"),
             (("data.py", "strategyqa", "nogroup"), "argument GROUP: 'nogroup' is not one of tasks, codi, markovian"),
             (("train.py", "sfft", "strategyqa"), "argument METHOD: 'sfft' is not one of sft, cot_distill, cot_sft"),
             (("markovian.py", "lockers", "markov"), "argument VARIANT: 'markov' is not one of markovian,"),
             (("dpo.py",), "arguments: dpo.py takes TASK, got none"),
             (("dpo.py", "strategyqa", "extra"), "arguments: dpo.py takes TASK, got strategyqa extra")]
    for args, expected in cases:
        result = run_stage(tmp_path, *args)
        assert result.returncode == 2 and "Traceback" not in result.stderr, (args, result.stderr[-1500:])
        assert expected in " ".join(result.stderr.split()), (args, result.stderr)
    assert not (tmp_path / "data").exists() and not (tmp_path / "metrics").exists()


def test_an_unwritable_output_path_is_one_paragraph_and_the_previous_outputs_stay(tmp_path):
    """Run by hand, data@strategyqa rewrites its split files, then cannot write its metrics (a file stands where the
    folder must be; a permission bit would not stop root): exit 2 naming the path, and the previous split files
    come back as they were."""
    from conftest import copy_project

    copy_project(tmp_path)
    params_with(tmp_path)
    split = tmp_path / "data" / "tasks" / "strategyqa"
    split.mkdir(parents=True)
    previous = {"train.jsonl": "the previous run's train rows\n", "test.jsonl": "the previous run's test rows\n"}
    for name, text in previous.items():
        (split / name).write_text(text)
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "data").write_text("a file where the metrics folder must be\n")
    result = run_stage(tmp_path, "data.py", "strategyqa")
    message = " ".join(result.stderr.split())
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "failed (FileExistsError)" in message or "failed (NotADirectoryError)" in message, message
    assert "metrics/data" in message and "its previous outputs are back as they were: data/tasks/strategyqa" in message
    assert {f.name: f.read_text() for f in split.iterdir()} == previous
    assert not list(split.parent.glob(".*cotlab-previous"))  # nothing left aside
    # And a good run by hand replaces them, leaving nothing aside either.
    (tmp_path / "metrics" / "data").unlink()
    assert run_stage(tmp_path, "data.py", "strategyqa").returncode == 0
    assert (split / "train.jsonl").read_text() != previous["train.jsonl"]
    assert not list(split.parent.glob(".*cotlab-previous")) and (tmp_path / "metrics/data/strategyqa.json").is_file()


def _dvc_project(tmp_path: Path) -> tuple[Path, dict]:
    from conftest import copy_project

    copy_project(tmp_path)
    params_with(tmp_path)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "MLFLOW_TRACKING_URI": ""}
    for cmd in (["git", "init", "-q"], ["git", "config", "user.email", "t@t"], ["git", "config", "user.name", "t"]):
        subprocess.run(cmd, cwd=tmp_path, check=True, env=env)
    return tmp_path, env


def sh(root: Path, env: dict, command: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, shell=True, cwd=root, env=env, capture_output=True, text=True, timeout=300)


def test_a_failed_stage_under_dvc_ends_with_the_command_that_restores_its_last_good_outputs(tmp_path):
    """A local task whose file is truncated after a committed run: DVC removes data@'s outputs before the command,
    the stage fails naming the row, and its last line is the exact command that brings both kinds back: the
    git-tracked metrics and the cached splits."""
    root, env = _dvc_project(tmp_path)
    rows = [{"id": f"r{i}", "question": f"Is {i} even?", "answer": "yes" if i % 2 == 0 else "no"} for i in range(40)]
    (root / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    params = (root / "params.yaml").read_text().replace(
        "  strategyqa: {source: strategyqa, test_fraction: 0.2}",
        "  strategyqa: {source: local, path: rows.jsonl, answer_type: yes_no}", 1)
    (root / "params.yaml").write_text(params)
    # the flush first: a detached flush still writing mlflow.db-journal made `git add -A` fail to stat it
    first = sh(root, env, "dvc repro data@strategyqa && python -m cotlab.tracking flush && git add -A && "
                          "git commit -qm good")
    assert first.returncode == 0, first.stderr[-2000:]
    good = {p: (root / p).read_bytes() for p in ("metrics/data/strategyqa.json", "data/tasks/strategyqa/train.jsonl",
                                                  "data/tasks/strategyqa/test.jsonl")}
    (root / "rows.jsonl").write_text((root / "rows.jsonl").read_text()[:-25])  # the last row cut mid-object
    failed = sh(root, env, "dvc repro -f -s data@strategyqa")
    assert failed.returncode != 0
    assert "rows.jsonl: row 40 is not valid JSON" in failed.stderr
    assert not any((root / p).exists() for p in good)  # DVC removed them before the command
    hint = "cotlab: stage data strategyqa failed; to get its last good outputs back, run: "
    lines = [line for line in failed.stderr.splitlines() if line.startswith("cotlab:")]
    command = " ".join(failed.stderr[failed.stderr.index(hint) + len(hint):].split("\nERROR")[0].split())
    assert hint in failed.stderr and lines[-1].startswith("cotlab: stage data strategyqa failed; to get its last")
    assert command == "git checkout HEAD -- metrics/data/strategyqa.json && dvc checkout data@strategyqa"
    restored = sh(root, env, command)
    assert restored.returncode == 0, restored.stderr[-2000:]
    assert {p: (root / p).read_bytes() for p in good} == good


def test_a_bad_param_stops_dvc_exp_run_before_any_stage_that_does_not_read_it(tmp_path):
    """`dvc exp run -S sft.batch_size=-4` and a task spec out of range: check_params, the first stage, names the key;
    no other stage runs."""
    root, env = _dvc_project(tmp_path)
    assert sh(root, env, "git add -A && git commit -qm start").returncode == 0
    for override, expected in [("sft.batch_size=-4", "sft.batch_size: -4 is out of range"),
                               ("task_specs.strategyqa.test_fraction=1.5",
                                "task_specs.strategyqa.test_fraction: must be a number strictly between 0 and 1")]:
        result = sh(root, env, f"dvc exp run -S '{override}'")
        assert result.returncode != 0 and expected in result.stderr, (override, result.stderr[-2000:])
        assert "Running stage 'check_params'" in result.stdout + result.stderr
        assert not (root / "data/tasks/strategyqa").exists() and not (root / "models/base").exists()
        assert sh(root, env, "git checkout -- params.yaml").returncode == 0  # the next case starts from the good file
