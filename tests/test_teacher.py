"""The teacher against a real OpenAI-protocol server on 127.0.0.1 with injected faults; the cache; dry runs; a
SIGKILL mid-run and the resume; the API key never written anywhere."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from conftest import ROOT, copy_project
from cotlab.config import ConfigError, load_yaml, parse_params
from cotlab.teacher import TeacherConfig
from cotlab.schema import read_jsonl, write_jsonl
from cotlab.data.sources import load_task
from cotlab.teacher import Request, ResponseCache, Teacher, cache_key
from openai_server import FakeOpenAI, prompt_key

KEY_ENV = "COTLAB_TEST_TEACHER_KEY"
PLANTED = "sk-cotlab-planted-6f1d0c9e4b7a"


@pytest.fixture(autouse=True)
def planted_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, PLANTED)


def config(server, **overrides) -> TeacherConfig:
    return TeacherConfig(**{"backend": "openai", "model": "test-model", "base_url": server.base_url,
                            "api_key_env": KEY_ENV, "concurrency": 8, "timeout_s": 1.0, "max_retries": 2,
                            "max_failure_rate": 1.0, **overrides})  # the fault tests count every failure kind


def ask(*prompts: str) -> list[Request]:
    return [Request(f"r{i}", [{"role": "user", "content": p}]) for i, p in enumerate(prompts)]


FAULTS = {
    "rate-limited": ["429"],
    "server-error": ["500"],
    "unavailable": ["503", "503"],
    "slow": ["slow"],
    "dropped": ["drop"],
    "malformed": ["malformed"],
    "empty": ["empty"],
    "down": ["500"] * 10,
}


def test_every_request_ends_answered_or_failed_with_its_reason(tmp_path):
    prompts = [*FAULTS, "fine", "fine"]  # "fine" twice: identical requests are sent once
    with FakeOpenAI(faults=FAULTS, slow_s=2.0) as server:
        responses, usage = Teacher(config(server), cache_dir=tmp_path).run(ask(*prompts))
        attempts = list(server.attempts)
        answered = server.answered
    by_prompt = {p: r for p, r in zip(prompts, responses)}
    for retried in ("rate-limited", "server-error", "unavailable", "slow", "dropped", "fine"):
        assert by_prompt[retried].status == "ok" and "Final Assessment" in by_prompt[retried].text, retried
    assert {p: by_prompt[p].reason for p in ("malformed", "empty", "down")} == {
        "malformed": "malformed", "empty": "empty_choices", "down": "server_error_500"}
    assert responses[-1].id == "r9" and responses[-1].text == responses[-2].text
    # No prompt answered twice; each retried fault cost exactly one extra attempt; "down" used all 3 attempts.
    assert max(answered.values()) == 1 and len(answered) == 6
    per_prompt = {p: sum(a["key"] == prompt_key([{"role": "user", "content": p}]) for a in attempts) for p in FAULTS}
    assert per_prompt == {"rate-limited": 2, "server-error": 2, "unavailable": 3, "slow": 2, "dropped": 2,
                          "malformed": 1, "empty": 1, "down": 3}
    # Retry-After: 1.5 honoured (the client's own backoff would wait <= 0.5 s).
    t = [a["t"] for a in attempts if a["key"] == prompt_key([{"role": "user", "content": "rate-limited"}])]
    assert t[1] - t[0] >= 1.45
    assert {a["authorization"] for a in attempts} == {f"Bearer {PLANTED}"}
    assert usage.requests == 9 and usage.sent == 9 and usage.answered == 6 and usage.http_attempts == len(attempts)
    assert dict(usage.failed) == {"malformed": 1, "empty_choices": 1, "server_error_500": 1}
    assert usage.completion_tokens > 0 and usage.cost_usd is None  # unknown model: no price


def test_rerun_sends_only_what_was_not_answered(tmp_path):
    prompts = ["a", "b", "c", "malformed"]
    with FakeOpenAI(faults={"malformed": ["malformed"]}) as server:
        first, usage1 = Teacher(config(server), cache_dir=tmp_path).run(ask(*prompts))
        n_first = len(server.attempts)
        second, usage2 = Teacher(config(server), cache_dir=tmp_path).run(ask(*prompts))
        resent = [a["key"] for a in server.attempts[n_first:]]
    assert [r.status for r in first] == ["ok", "ok", "ok", "failed"]
    assert resent == [prompt_key([{"role": "user", "content": "malformed"}])]  # failures are not cached
    assert [r.cached for r in second] == [True, True, True, False] and all(r.status == "ok" for r in second)
    assert [r.text for r in second[:3]] == [r.text for r in first[:3]]
    assert usage2.cache_hits == 3 and usage2.sent == 1 and usage2.prompt_tokens < usage1.prompt_tokens


def test_a_run_whose_requests_mostly_fail_stops_naming_the_endpoint_and_the_failures(tmp_path):
    """Past max_failure_rate the run raises before anything is returned to the stage (so it writes nothing); the
    answers that did come back are cached. At the rate exactly, it goes on."""
    from cotlab.errors import BackendFailedError

    with FakeOpenAI(faults={"down": ["500"] * 20}) as server:
        teacher = Teacher(config(server, max_failure_rate=0.25, max_retries=1), cache_dir=tmp_path)
        with pytest.raises(BackendFailedError) as error:
            teacher.run(ask("down 1", "down 2", "fine"))
        message = str(error.value)
        assert f"2 of the 3 requests sent to {server.base_url} (model test-model) failed (server_error_500 2)" in message
        assert "teacher.max_failure_rate (0.25)" in message and "1 answers came back and are cached" in message
        assert len(ResponseCache(tmp_path)) == 1
        responses, usage = teacher.run(ask("down 3", "a", "b", "c"))  # 1 of 4 = 25%: not more than allowed
        assert [r.status for r in responses] == ["failed", "ok", "ok", "ok"] and usage.failed["server_error_500"] == 1


def test_the_teacher_stage_with_nothing_listening_exits_2_and_keeps_the_previous_outputs(tmp_path):
    with FakeOpenAI() as server:
        root, env = _stage_project(tmp_path, server, n=6, concurrency=2)
        url = server.base_url
    # The server is gone: its port refuses connections.
    previous = {"data/teacher/strategyqa/train.jsonl": '{"id": "x", "status": "ok"}\n',
                "metrics/teacher/strategyqa.json": '{"usage.answered": 6}\n'}
    for name, text in previous.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    result = subprocess.run([sys.executable, str(ROOT / "stages" / "teacher.py"), "strategyqa"], cwd=root, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    message = " ".join(result.stderr.split())
    assert f"6 of the 6 requests sent to {url} (model test-model) failed (connection 6)" in message
    assert "BackendFailedError" in message and "teacher.base_url" in message
    assert {name: (root / name).read_text() for name in previous} == previous


def test_concurrency_is_bounded_and_used(tmp_path):
    with FakeOpenAI(latency_s=0.2) as server:
        Teacher(config(server, concurrency=4), cache_dir=tmp_path).run(ask(*[f"q{i}" for i in range(16)]))
        assert server.max_in_flight == 4


def test_cache_key_covers_backend_model_messages_and_sampling():
    messages = [{"role": "user", "content": "q"}]
    base = cache_key("openai", "m", messages, 0.0, 64)
    assert base == cache_key("openai", "m", [{"content": "q", "role": "user"}], 0.0, 64)
    others = [cache_key("local", "m", messages, 0.0, 64), cache_key("openai", "m2", messages, 0.0, 64),
              cache_key("openai", "m", [{"role": "user", "content": "q2"}], 0.0, 64),
              cache_key("openai", "m", messages, 0.7, 64), cache_key("openai", "m", messages, 0.0, 65)]
    assert len({base, *others}) == 6


def test_missing_key_fails_before_any_request(tmp_path, monkeypatch):
    monkeypatch.delenv(KEY_ENV)
    with FakeOpenAI() as server:
        with pytest.raises(ConfigError, match=f"teacher.api_key_env: the environment variable {KEY_ENV} is not set"):
            Teacher(config(server), cache_dir=tmp_path)
        assert server.attempts == []


def test_a_key_pasted_into_params_is_refused_without_echoing_it():
    data = load_yaml(ROOT / "params.yaml")
    data["teacher"]["api_key_env"] = "sk-proj-abc123-secret"
    with pytest.raises(ConfigError) as error:
        parse_params(data).section("teacher", TeacherConfig)
    assert "teacher.api_key_env" in str(error.value) and "sk-proj" not in str(error.value)


def test_dry_run_sends_nothing_and_estimates(tmp_path):
    from cotlab.teacher import dry_run_rows

    with FakeOpenAI() as server:
        cfg = config(server, model="gpt-4o-mini", dry_run=True, max_tokens=100)
        requests = ask("x" * 400, "y" * 40)
        responses, usage = Teacher(cfg, cache_dir=tmp_path).run(requests)
        assert server.attempts == []
    assert {r.status for r in responses} == {"dry_run"}
    rows = dry_run_rows(requests, responses, "gpt-4o-mini")
    assert rows[0]["est_prompt_tokens"] == 104 and rows[0]["est_completion_tokens"] == 100
    assert rows[0]["est_cost_usd"] == pytest.approx((104 * 0.15 + 100 * 0.60) / 1e6)
    assert usage.cost_usd == pytest.approx(sum(r["est_cost_usd"] for r in rows))
    assert usage.sent == 0 and len(ResponseCache(tmp_path)) == 0


def test_dry_run_needs_no_key(tmp_path, monkeypatch):
    monkeypatch.delenv(KEY_ENV)
    with FakeOpenAI() as server:
        responses, usage = Teacher(config(server, dry_run=True), cache_dir=tmp_path).run(ask("x"))
        assert server.attempts == []
        assert {r.status for r in responses} == {"dry_run"} and usage.sent == 0
        with pytest.raises(ConfigError, match=KEY_ENV):  # the real run still refuses before any request
            Teacher(config(server), cache_dir=tmp_path)
        assert server.attempts == []


def _talking_tiny_model(tiny_base, out: Path) -> Path:
    """The tiny random Llama with its LM head rewired so that every step emits " Yes" or " No": a random model
    mostly emits whitespace, which the backend rightly reports as empty."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    model = AutoModelForCausalLM.from_pretrained(tiny_base)
    head = torch.zeros_like(model.lm_head.weight)
    head[tokenizer.encode(" Yes")[0], 0], head[tokenizer.encode(" No")[0], 0] = 1.0, -1.0
    model.config.tie_word_embeddings = False
    model.lm_head.weight = torch.nn.Parameter(head)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def test_local_backend_generates_batched_and_caches(tmp_path, tiny_base):
    model = _talking_tiny_model(tiny_base, tmp_path / "teacher-model")
    cfg = TeacherConfig(backend="local", model=str(model), max_tokens=8, local_batch_size=3)
    requests = ask("first question", "second", "a third, longer question", "first question")
    cache = tmp_path / "cache"
    responses, usage = Teacher(cfg, cache_dir=cache).run(requests)
    assert usage.sent == 3 and [r.status for r in responses] == ["ok"] * 4
    assert all(set(r.text.split()) <= {"Yes", "No"} and r.completion_tokens == 8 for r in responses)
    assert responses[0].text == responses[3].text and usage.prompt_tokens > 0
    again, usage2 = Teacher(cfg, cache_dir=cache).run(requests)
    assert usage2.cache_hits == 3 and usage2.sent == 0 and [r.text for r in again] == [r.text for r in responses]
    # New weights at the same path: a different model, so nothing comes from the cache.
    _talking_tiny_model(tiny_base, model)
    import safetensors.torch

    weights = safetensors.torch.load_file(model / "model.safetensors")
    weights["lm_head.weight"] = -weights["lm_head.weight"]
    safetensors.torch.save_file(weights, model / "model.safetensors", metadata={"format": "pt"})
    _, usage3 = Teacher(cfg, cache_dir=cache).run(requests)
    assert usage3.cache_hits == 0 and usage3.sent == 3


# ---------------------------------------------------------------- the stage as a process


def _stage_project(tmp_path: Path, server, n: int, concurrency: int) -> tuple[Path, dict]:
    """A project folder with params for the openai backend and the teacher stage's inputs written by hand."""
    root = copy_project(tmp_path / "project")
    yaml = YAML()
    params = yaml.load(root / "params.yaml")
    params.update({"scale": "tiny", "tasks": ["strategyqa"]})
    params["dpo"]["tasks"] = ["strategyqa"]
    params["teacher"].update({"backend": "openai", "model": "test-model", "base_url": server.base_url,
                              "api_key_env": KEY_ENV, "concurrency": concurrency, "timeout_s": 5, "max_retries": 1})
    yaml.dump(params, root / "params.yaml")
    train = load_task("strategyqa", {"source": "strategyqa"}, n, 4, seed=0)["train"]
    write_jsonl(root / "data/tasks/strategyqa/train.jsonl", train)
    write_jsonl(root / "data/drafts/strategyqa/train.jsonl", [{"id": ex.id, "draft": "Answer: Yes - because."}
                                                              for ex in train])
    env = {**os.environ, "COTLAB_CACHE_DIR": str(tmp_path / "cache"),
           "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return root, env


@pytest.mark.slow
def test_sigkill_mid_run_then_rerun_sends_only_the_unanswered(tmp_path):
    concurrency = 4
    with FakeOpenAI(latency_s=0.25) as server:
        root, env = _stage_project(tmp_path, server, n=48, concurrency=concurrency)
        stage = [sys.executable, str(ROOT / "stages" / "teacher.py"), "strategyqa"]
        process = subprocess.Popen(stage, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        cache = ResponseCache(tmp_path / "cache" / "teacher")
        deadline = time.time() + 120
        while len(cache) < 12 and time.time() < deadline and process.poll() is None:  # >= 12 answers stored
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert process.returncode == -signal.SIGKILL
        time.sleep(0.5)  # let the server finish what was in flight
        cached_keys = {json.loads(p.read_text())["key"] for p in cache.root.glob("*/*.json")}
        attempted_before = len(server.attempts)
        assert 12 <= len(cached_keys) < 48
        assert not (root / "data/teacher/strategyqa/train.jsonl").exists()  # nothing half-written left behind

        rerun = subprocess.run(stage, cwd=root, env=env, capture_output=True, text=True, timeout=300)
        assert rerun.returncode == 0, rerun.stderr[-2000:]
        resent = server.attempts[attempted_before:]
        answered = dict(server.answered)
    rows = read_jsonl(root / "data/teacher/strategyqa/train.jsonl")
    assert len(rows) == 48 and all(r["status"] == "ok" for r in rows)
    assert sum(r["cached"] for r in rows) == len(cached_keys)
    # The re-run asked only for what the cache did not hold, once each ...
    assert len(resent) == 48 - len(cached_keys) == len({a["key"] for a in resent})
    # ... and at most the requests in flight at the kill were answered twice.
    assert sum(n - 1 for n in answered.values()) <= concurrency
    metrics = json.loads((root / "metrics/teacher/strategyqa.json").read_text())
    assert metrics["usage.cache_hits"] == len(cached_keys) and metrics["usage.sent"] == 48 - len(cached_keys)


@pytest.mark.slow
def test_the_api_key_is_written_nowhere(tmp_path):
    with FakeOpenAI(faults={"a": ["429", "500"]}, retry_after="0.1") as server:
        root, env = _stage_project(tmp_path, server, n=6, concurrency=2)
        env["OPENAI_LOG"] = "debug"  # the client's own debug logging, the most talkative it gets
        before = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}  # this test file holds the key
        for cmd in (["git", "init", "-q"], ["dvc", "repro", "-s", "teacher@strategyqa"]):
            result = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=300)
            assert result.returncode == 0, result.stderr[-2000:]
        assert {a["authorization"] for a in server.attempts} == {f"Bearer {PLANTED}"}  # the key was used
    logs = result.stdout + result.stderr
    assert "teacher@strategyqa" in logs and PLANTED not in logs
    flushed = subprocess.run([sys.executable, "-m", "cotlab.tracking", "flush"], cwd=root, env=env,
                             capture_output=True, text=True, timeout=300)  # the stage's run, written to the store
    assert flushed.returncode == 0 and PLANTED not in flushed.stdout + flushed.stderr
    written = [p for p in [*root.rglob("*"), *(tmp_path / "cache").rglob("*")]
               if p.is_file() and before.get(p) != p.stat().st_mtime_ns]
    assert len(written) > 10
    assert (root / "dvc.lock").is_file() and (root / "mlflow.db").is_file()
    leaking = [str(p) for p in written if PLANTED.encode() in p.read_bytes()]
    assert leaking == []
    import mlflow

    client = mlflow.tracking.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    run = client.search_runs([client.get_experiment_by_name("cotlab").experiment_id])[0]
    assert run.data.params["teacher.api_key_env"] == KEY_ENV
    assert PLANTED not in json.dumps([run.data.params, run.data.tags, run.data.metrics])
