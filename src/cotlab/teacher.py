"""Teacher LLMs behind one interface, with a content-addressed on-disk response cache and usage accounting.

Backends:
- `oracle`: the dataset's own reasoning (GSM8K worked solutions, StrategyQA facts + decomposition, reasoning-gym
  solutions) rendered in the teacher's format by `cotlab.formats`. Exact, free, offline.
- `local`: a transformers model in this process, batched greedy generation.
- `openai`: the official async `openai` client against any OpenAI-compatible `base_url` (OpenAI, vLLM, Ollama,
  llama.cpp server). Retries, exponential backoff and Retry-After are the client's own (`max_retries`); what is
  still failing after them is recorded with its reason, never raised.

The cache key is sha256 over (backend, model, messages, temperature, max_tokens). Every answer is written to the
cache the moment it arrives, atomically, so a crash or a SIGKILL loses at most the requests in flight, and a
re-run (or an experiment that changes only downstream params) sends nothing that was already answered.
The cache lives outside every DVC output (`<repo>/.cotlab-cache/teacher`, or $COTLAB_CACHE_DIR), so DVC never
deletes it before a run. Failures are not cached: a re-run tries them again.

The API key is read from the environment variable named by `api_key_env` and goes only into the client.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

from cotlab.config import ConfigError
from cotlab.answers import is_correct
from cotlab.errors import BackendFailedError, OracleUnavailable
from cotlab.formats import Draft, parse_draft, reasoning_steps, render_teacher
from cotlab.schema import Example, write_json
from cotlab.prompts import ANSWER_HINT, display_answer, question_block

@dataclass
class TeacherConfig:
    """The `teacher` section: who writes the reasoning (teacher@) and the candidates (candidates@)."""

    backend: Literal["oracle", "local", "openai"] = "oracle"
    model: str = "gpt-4o-mini"  # openai: the served model's name; local: a checkpoint folder, HF id or path
    base_url: str | None = None  # None = the client's default (api.openai.com)
    api_key_env: str | None = "OPENAI_API_KEY"  # the NAME of the variable holding the key; null for keyless servers
    concurrency: int = 16
    timeout_s: float = 60.0
    max_retries: int = 4
    temperature: float = 0.0
    max_tokens: int = 512
    local_batch_size: int = 16
    dry_run: bool = False
    # local, openai: a run whose share of failed requests (after the client's retries) exceeds this stops with
    # BackendFailedError before writing anything; the answers that came back stay cached for the next run.
    max_failure_rate: float = 0.25

    def __post_init__(self):
        if not 0 <= self.max_failure_rate <= 1:
            raise ConfigError(f"max_failure_rate: {self.max_failure_rate!r} must be a share in [0, 1]")
        env_name = self.api_key_env
        if env_name is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", env_name):
            # Never echo the value: it may be the key itself, pasted where its variable's name belongs.
            raise ConfigError("api_key_env: must be the NAME of an environment variable (letters, digits, _), not a "
                              "key; export the key in that variable instead")


# USD per 1M tokens (input, output), from the providers' price lists; models not listed get no estimate.
PRICES_PER_MTOK = {
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-3.5-turbo": (0.50, 1.50),
    "o3-mini": (1.10, 4.40),
    "o4-mini": (1.10, 4.40),
}
CHARS_PER_TOKEN = 4  # dry-run estimate of prompt tokens when no tokenizer of the teacher is at hand


@dataclass
class Request:
    id: str
    messages: list[dict[str, str]]
    kind: str = "reasoning"  # what the oracle renders: reasoning | candidates
    example: Example | None = None  # the oracle's source of truth
    context: dict[str, Any] = field(default_factory=dict)  # what the oracle needs besides the example


@dataclass
class Response:
    id: str
    key: str
    status: str  # ok | failed | dry_run
    text: str = ""
    reason: str = ""  # why it failed: rate_limited, server_error, timeout, connection, malformed, empty_choices, ...
    cached: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class Usage:
    requests: int = 0  # distinct requests this run asked for
    cache_hits: int = 0
    sent: int = 0  # requests that went to the backend (each answered or failed once)
    http_attempts: int = 0  # HTTP requests, retries included (openai backend)
    answered: int = 0
    failed: Counter = field(default_factory=Counter)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = None
    wall_s: float = 0.0

    def metrics(self, prefix: str = "usage") -> dict[str, Any]:
        out = {f"{prefix}.{k}": v for k, v in asdict(self).items() if k != "failed" and v is not None}
        out[f"{prefix}.failed"] = sum(self.failed.values())
        out.update({f"{prefix}.failed.{reason}": n for reason, n in sorted(self.failed.items())})
        return out


def cache_key(backend: str, model: str, messages: list[dict[str, str]], temperature: float, max_tokens: int) -> str:
    payload = {"backend": backend, "model": model, "messages": messages, "temperature": temperature,
               "max_tokens": max_tokens}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def default_cache_dir() -> Path:
    from cotlab.tracking import repo_root

    return Path(os.environ.get("COTLAB_CACHE_DIR") or repo_root() / ".cotlab-cache") / "teacher"


class ResponseCache:
    """One JSON file per answer, named by its key: concurrent writers never corrupt each other's entries."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict | None:
        try:
            return json.loads(self._path(key).read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            return None  # a torn file cannot exist (atomic writes), but a hand-edited one is just a miss

    def put(self, key: str, record: dict) -> None:
        write_json(self._path(key), record)

    def __len__(self) -> int:
        return sum(1 for _ in self.root.glob("*/*.json")) if self.root.is_dir() else 0


def estimate_cost(model: str, prompt_tokens: int, completion_tokens: int) -> float | None:
    price = PRICES_PER_MTOK.get(model)
    if price is None:
        return None
    return round((prompt_tokens * price[0] + completion_tokens * price[1]) / 1e6, 9)


# ---------------------------------------------------------------- the oracle teacher

def oracle_analysis(example: Example, draft: Draft | None) -> str:
    gold = display_answer(example)
    if draft is None or not draft.ok:
        return "The draft gives no clear final answer, so the reasoning below starts from the question itself."
    shown = draft.answer.capitalize() if example.answer_type == "yes_no" else draft.answer
    if is_correct(draft.answer, example.answer, example.answer_type):
        return f"The draft's answer, {shown}, is correct; the steps below show why."
    return f"The draft answers {shown}, but the answer is {gold}; the steps below show where it goes wrong."


def oracle_teacher(example: Example, draft_text: str) -> str:
    """The dataset's own reasoning in the teacher's format, with an analysis of the student's draft."""
    steps = reasoning_steps(example.reasoning)
    if not steps:
        raise OracleUnavailable("no_reasoning")
    return render_teacher(oracle_analysis(example, parse_draft(draft_text, example.answer_type)), steps,
                          display_answer(example))


class Teacher:
    def __init__(self, config: TeacherConfig, cache_dir: str | Path | None = None,
                 oracle: Callable[[Request], str] | None = None, section: str = "teacher"):
        self.config = config
        self.section = section  # the params section, named in errors
        self.cache = ResponseCache(cache_dir or default_cache_dir())
        self.oracle = oracle
        self._local = None
        self._local_identity: str | None = None
        if config.backend == "openai" and not config.dry_run:  # a dry run sends nothing, so it needs no key
            self._api_key()  # fail before any work, not after the first request
        if config.backend == "local" and config.temperature > 0:
            raise ConfigError("teacher.temperature: the local backend decodes greedily; set it to 0")

    @property
    def model_name(self) -> str:
        """The model as the cache key sees it. A local folder is named with a hash of its weights too, so that
        retraining it (same path, new weights) never serves the old model's answers."""
        if self.config.backend == "oracle":
            return "oracle"
        if self.config.backend == "local" and Path(self.config.model).is_dir():
            if self._local_identity is None:
                from cotlab.models import fingerprint

                folder = Path(self.config.model)
                base = json.loads((folder / "manifest.json").read_text()).get("base_model", {}).get(
                    "fingerprint", "") if (folder / "manifest.json").is_file() else ""
                self._local_identity = f"{self.config.model}#{fingerprint(folder)[:16]}{base[:16]}"
            return self._local_identity
        return self.config.model

    def key(self, request: Request) -> str:
        c = self.config
        messages = request.messages
        if c.backend == "oracle":  # the oracle's answer depends on what it renders, not on the wording asked
            messages = [*messages, {"role": "oracle", "content": json.dumps(request.context, sort_keys=True)}]
        return cache_key(c.backend, self.model_name, messages, c.temperature, c.max_tokens)

    def _api_key(self) -> str:
        name = self.config.api_key_env
        if not name:
            return "not-needed"  # local servers (vLLM, Ollama, llama.cpp) accept any key
        value = os.environ.get(name)
        if not value:
            raise ConfigError(f"teacher.api_key_env: the environment variable {name} is not set; export the key "
                              f"there (the key itself never goes into params.yaml)")
        return value

    # ------------------------------------------------------------------ the one entry point

    def run(self, requests: Sequence[Request]) -> tuple[list[Response], Usage]:
        """One Response per request, in order. Identical requests are sent once."""
        start = time.perf_counter()
        usage = Usage()
        keys = [self.key(r) for r in requests]
        unique: dict[str, Request] = {}
        for key, request in zip(keys, requests):
            unique.setdefault(key, request)
        usage.requests = len(unique)
        answers: dict[str, Response] = {}
        todo: list[tuple[str, Request]] = []
        for key, request in unique.items():
            hit = self.cache.get(key) if self.config.backend != "oracle" else None
            if hit is not None:
                usage.cache_hits += 1
                answers[key] = Response(request.id, key, "ok", hit["text"], cached=True,
                                        prompt_tokens=hit.get("prompt_tokens", 0),
                                        completion_tokens=hit.get("completion_tokens", 0))
            else:
                todo.append((key, request))
        if self.config.dry_run:
            for key, request in todo:
                answers[key] = Response(request.id, key, "dry_run",
                                        prompt_tokens=estimate_prompt_tokens(request.messages),
                                        completion_tokens=self.config.max_tokens)
        elif todo:
            usage.sent = len(todo)
            backend = {"oracle": self._run_oracle, "local": self._run_local, "openai": self._run_openai}
            for response in backend[self.config.backend](todo, usage):
                answers[response.key] = response
        for response in answers.values():
            if response.status == "ok" and not response.cached:
                usage.answered += 1
            elif response.status == "failed":
                usage.failed[response.reason] += 1
            if response.status == "dry_run" or (response.status == "ok" and not response.cached):
                usage.prompt_tokens += response.prompt_tokens
                usage.completion_tokens += response.completion_tokens
        usage.cost_usd = 0.0 if self.config.backend != "openai" else estimate_cost(
            self.config.model, usage.prompt_tokens, usage.completion_tokens)
        usage.wall_s = round(time.perf_counter() - start, 3)
        self._check_failure_rate(usage)
        out = []
        for request, key in zip(requests, keys):
            r = answers[key]
            out.append(r if r.id == request.id else Response(**{**asdict(r), "id": request.id}))
        return out, usage

    @property
    def endpoint(self) -> str:
        if self.config.backend == "openai":
            return f"{self.config.base_url or 'https://api.openai.com/v1'} (model {self.config.model})"
        return f"the {self.config.backend} model {self.config.model}"

    def _check_failure_rate(self, usage: Usage) -> None:
        """The oracle's failures are examples without reasoning, a property of the data; a served or local
        model's failures past max_failure_rate mean the endpoint is wrong or down, and its outputs must not
        replace good ones."""
        n_failed = sum(usage.failed.values())
        if self.config.backend == "oracle" or not usage.sent or n_failed <= self.config.max_failure_rate * usage.sent:
            return
        kinds = ", ".join(f"{reason} {n}" for reason, n in usage.failed.most_common())
        raise BackendFailedError(
            f"{n_failed} of the {usage.sent} requests sent to {self.endpoint} failed ({kinds}), more than "
            f"{self.section}.max_failure_rate ({self.config.max_failure_rate:g}) allows; nothing was written. "
            f"{usage.answered} answers came back and are cached, so the next run sends only the failed requests. "
            f"Check {self.section}.base_url, {self.section}.model and the server's log.")

    def _store(self, key: str, text: str, prompt_tokens: int, completion_tokens: int) -> None:
        self.cache.put(key, {"key": key, "backend": self.config.backend, "model": self.model_name, "text": text,
                             "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens})

    # ------------------------------------------------------------------ oracle

    def _run_oracle(self, todo: list[tuple[str, Request]], usage: Usage) -> list[Response]:
        if self.oracle is None:
            raise ConfigError("teacher.backend: oracle needs a renderer for this stage's requests")
        out = []
        for key, request in todo:
            try:
                text = self.oracle(request)
            except OracleUnavailable as e:
                out.append(Response(request.id, key, "failed", reason=e.reason))
                continue
            out.append(Response(request.id, key, "ok", text))
        return out

    # ------------------------------------------------------------------ local

    def _run_local(self, todo: list[tuple[str, Request]], usage: Usage) -> list[Response]:
        from cotlab.evaluation.generate import generate
        from cotlab.prompts import render_messages

        model, tokenizer = self._local_model()
        prompts = [render_messages(tokenizer, r.messages) for _, r in todo]
        generations = generate(model, tokenizer, prompts, self.config.max_tokens, self.config.local_batch_size)
        out = []
        for (key, request), prompt, gen in zip(todo, prompts, generations):
            n_prompt = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
            if not gen.text.strip():
                out.append(Response(request.id, key, "failed", reason="empty_content"))
                continue
            self._store(key, gen.text, n_prompt, gen.n_new_tokens)
            out.append(Response(request.id, key, "ok", gen.text, prompt_tokens=n_prompt,
                                completion_tokens=gen.n_new_tokens))
        return out

    def _local_model(self):
        if self._local is None:
            from cotlab.models import ModelLoadError, load_checkpoint

            path = Path(self.config.model)
            if (path / "manifest.json").is_file():
                self._local = load_checkpoint(path, "auto")[:2]
            else:
                from transformers import AutoModelForCausalLM, AutoTokenizer

                from cotlab import hub

                if not path.exists():
                    hub.offline_unless_reachable()  # a hub id offline: the error at once, not after retries
                try:
                    tokenizer = AutoTokenizer.from_pretrained(self.config.model)
                    model = AutoModelForCausalLM.from_pretrained(self.config.model).eval()
                except (OSError, ValueError) as e:
                    raise ModelLoadError(f"teacher.model: cannot load {self.config.model!r} for the local "
                                         f"backend: {e}") from None
                if tokenizer.pad_token is None:
                    tokenizer.pad_token = tokenizer.eos_token
                self._local = (model, tokenizer)
        return self._local

    # ------------------------------------------------------------------ openai

    def _run_openai(self, todo: list[tuple[str, Request]], usage: Usage) -> list[Response]:
        return asyncio.run(self._openai_all(todo, usage))

    async def _openai_all(self, todo: list[tuple[str, Request]], usage: Usage) -> list[Response]:
        import openai

        async def count_attempt(request) -> None:
            usage.http_attempts += 1

        c = self.config
        http_client = openai.DefaultAsyncHttpxClient(event_hooks={"request": [count_attempt]})
        client = openai.AsyncOpenAI(base_url=c.base_url, api_key=self._api_key(), timeout=c.timeout_s,
                                    max_retries=c.max_retries, http_client=http_client)
        gate = asyncio.Semaphore(c.concurrency)

        async def one(key: str, request: Request) -> Response:
            async with gate:  # stored before the slot frees: at most `concurrency` answers are ever unsaved
                response = await self._openai_one(client, key, request)
                if response.status == "ok":
                    self._store(key, response.text, response.prompt_tokens, response.completion_tokens)
            return response

        async with client:
            return list(await asyncio.gather(*(one(key, request) for key, request in todo)))

    async def _openai_one(self, client, key: str, request: Request) -> Response:
        import openai

        c = self.config

        def failed(reason: str) -> Response:
            return Response(request.id, key, "failed", reason=reason)

        try:
            completion = await client.chat.completions.create(
                model=c.model, messages=request.messages, temperature=c.temperature, max_tokens=c.max_tokens)
        except openai.APITimeoutError:
            return failed("timeout")
        except openai.APIConnectionError:
            return failed("connection")
        except openai.RateLimitError:
            return failed("rate_limited")
        except openai.InternalServerError as e:
            return failed(f"server_error_{e.status_code}")
        except openai.AuthenticationError:
            return failed("auth")
        except openai.APIStatusError as e:
            return failed(f"http_{e.status_code}")
        except (openai.APIResponseValidationError, json.JSONDecodeError, ValueError):
            return failed("malformed")
        choices = getattr(completion, "choices", None)
        if not isinstance(choices, list):
            return failed("malformed")  # a 200 whose body is not a chat completion (e.g. not JSON at all)
        if not choices:
            return failed("empty_choices")
        message = getattr(choices[0], "message", None)
        text = getattr(message, "content", None)
        if not isinstance(text, str) or not text.strip():
            return failed("empty_content")
        tokens = getattr(completion, "usage", None)
        return Response(request.id, key, "ok", text,
                        prompt_tokens=int(getattr(tokens, "prompt_tokens", 0) or 0),
                        completion_tokens=int(getattr(tokens, "completion_tokens", 0) or 0))


def estimate_prompt_tokens(messages: list[dict[str, str]]) -> int:
    return sum(len(m["content"]) for m in messages) // CHARS_PER_TOKEN + 4 * len(messages)


def dry_run_rows(requests: Sequence[Request], responses: Sequence[Response], model: str) -> list[dict]:
    """What a real run would send: the messages, token estimates (completion = max_tokens, an upper bound) and
    the estimated cost; requests already in the cache are marked and cost nothing."""
    rows = []
    for request, response in zip(requests, responses):
        cost = None if response.cached else estimate_cost(model, response.prompt_tokens, response.completion_tokens)
        rows.append({"id": request.id, "messages": request.messages, "cached": response.cached,
                     "est_prompt_tokens": response.prompt_tokens, "est_completion_tokens": response.completion_tokens,
                     "est_cost_usd": cost})
    return rows


TEACHER_SYSTEM = "You are a patient teacher. You check a student's draft and then solve the problem carefully."


def teacher_messages(example: Example, draft: str) -> list[dict[str, str]]:
    hint = ANSWER_HINT[example.answer_type]
    return [
        {"role": "system", "content": TEACHER_SYSTEM},
        {"role": "user", "content": (
            f"{question_block(example, draft_facts=True)}\n\n"
            f"Student draft:\n{draft.strip() or '(no draft)'}\n\n"
            "Reply in exactly this format:\n"
            "Teaching Analysis: <what the draft gets right or wrong, in one or two sentences>\n"
            "Step-by-Step Reasoning:\n1. <first step>\n2. <next step>\n...\n"
            f"Final Assessment: the answer is: **<{hint}>**"
        )},
    ]
