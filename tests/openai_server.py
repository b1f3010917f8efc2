"""A real HTTP server on 127.0.0.1 speaking the OpenAI chat-completions protocol, with injected faults.

Faults are scripted per prompt: `faults[marker]` is a list consumed one per attempt by every request whose last
message contains `marker` ("429", "500", "503", "slow", "drop", "malformed", "empty"); when the list is used up the
request is answered. Every attempt is recorded, and `answered` counts full answers per prompt.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable


def prompt_key(messages: list[dict]) -> str:
    return hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()[:16]


def default_reply(messages: list[dict]) -> str:
    return ("Teaching Analysis: The draft is checked.\nStep-by-Step Reasoning:\n1. Read the question carefully.\n"
            f"2. Work it out ({prompt_key(messages)}).\nFinal Assessment: the answer is: **Yes**")


class _Server(ThreadingHTTPServer):
    # The default listen backlog (5) drops SYNs when more clients connect at once; the kernel resends them after
    # 1 s, which a client with a 1 s timeout sees as a connect timeout that never reached the server.
    request_queue_size = 256


class FakeOpenAI:
    def __init__(self, latency_s: float = 0.0, faults: dict[str, list[str]] | None = None,
                 retry_after: str = "1.5", slow_s: float = 3.0, reply: Callable[[list[dict]], str] = default_reply):
        self.latency_s, self.retry_after, self.slow_s, self.reply = latency_s, retry_after, slow_s, reply
        self.faults = {marker: list(kinds) for marker, kinds in (faults or {}).items()}
        self.attempts: list[dict] = []  # {"key", "fault", "t", "authorization"}
        self.answered: Counter = Counter()
        self.lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0
        self._server: ThreadingHTTPServer | None = None

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def _next_fault(self, text: str) -> str | None:
        for marker, kinds in self.faults.items():
            if marker in text and kinds:
                return kinds.pop(0)
        return None

    def __enter__(self) -> "FakeOpenAI":
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):  # /stats: what a benchmark in another process needs to know
                with owner.lock:
                    stats = {"attempts": len(owner.attempts), "answered": sum(owner.answered.values())}
                self._send(200, json.dumps(stats).encode())

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                messages = body["messages"]
                key = prompt_key(messages)
                with owner.lock:
                    fault = owner._next_fault(messages[-1]["content"])
                    owner.attempts.append({"key": key, "fault": fault, "t": time.monotonic(),
                                           "authorization": self.headers.get("Authorization", "")})
                    owner.in_flight += 1
                    owner.max_in_flight = max(owner.max_in_flight, owner.in_flight)
                try:
                    self._answer(fault, body, messages, key)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout) before we answered
                finally:
                    with owner.lock:
                        owner.in_flight -= 1

            def _answer(self, fault, body, messages, key):
                error = json.dumps({"error": {"message": "injected", "type": "injected"}}).encode()
                match fault:
                    case "429":
                        return self._send(429, error, {"Retry-After": owner.retry_after})
                    case "500" | "503":
                        return self._send(int(fault), error)
                    case "drop":
                        self.close_connection = True
                        return  # no status line at all: the client sees a dropped connection
                    case "malformed":
                        return self._send(200, b'{"id": "x", "choices": [{"message": ')
                    case "empty":
                        return self._send(200, json.dumps({"id": "x", "object": "chat.completion", "created": 0,
                                                           "model": body["model"], "choices": []}).encode())
                    case "slow":
                        time.sleep(owner.slow_s)
                        return self._send(200, b"{}")
                time.sleep(owner.latency_s)
                text = owner.reply(messages)
                completion = {
                    "id": f"chatcmpl-{key}", "object": "chat.completion", "created": int(time.time()),
                    "model": body["model"],
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": text}}],
                    "usage": {"prompt_tokens": sum(len(m["content"].split()) for m in messages),
                              "completion_tokens": len(text.split()),
                              "total_tokens": 0},
                }
                self._send(200, json.dumps(completion).encode())
                with owner.lock:
                    owner.answered[key] += 1

        self._server = _Server(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def keys_attempted(self) -> set[str]:
        with self.lock:
            return {a["key"] for a in self.attempts}


if __name__ == "__main__":  # a server in its own process (benchmarks): prints its base_url, serves until killed
    import argparse
    import sys

    parser = argparse.ArgumentParser()
    parser.add_argument("--latency-s", type=float, default=0.0)
    with FakeOpenAI(latency_s=parser.parse_args().latency_s) as server:
        print(server.base_url, flush=True)
        sys.stdin.read()  # until the parent closes our stdin
