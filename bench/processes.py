"""What the end-to-end benchmarks share: the test model cache, the `loraloop` CLI, and
`loraloop serve` as a child process that is ready before it is used and stopped after.

Imported by the scripts in this folder (`python bench/x.py` puts bench/ on the path); it puts
the project root on the path for them.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CACHE = Path(os.environ.get("LORALOOP_TEST_CACHE", Path.home() / ".cache/loraloop-tests"))


def cli(env: dict, *args: str) -> dict:
    """`loraloop ARGS` with `env`; its last line of output as JSON."""
    out = subprocess.run([sys.executable, "-m", "gateway.cli", *args], env=env, capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def start_serve(env: dict, port: int, log_path: Path, timeout: float = 300) -> subprocess.Popen:
    """`loraloop serve` (output appended to `log_path`) once its /ready answers 200; killed
    if it does not get there, so no gateway is left behind to front the next run's servers."""
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve"], env=env, stdout=log,
                                stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"loraloop serve did not become ready; see {log_path}")
        time.sleep(0.1)


@contextmanager
def serving(env: dict, port: int, log_path: Path) -> Iterator[subprocess.Popen]:
    """`start_serve` for a `with` block: on an error the log's tail is printed; at the end
    the gateway (and the vLLM it supervises) get SIGTERM."""
    proc = start_serve(env, port, log_path)
    try:
        yield proc
    except Exception:
        print(log_path.read_text()[-3000:], file=sys.stderr)
        raise
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)


def prompts(n: int = 200) -> list[str]:
    """Prompts of the demo model's domain: many distinct ones, as real traffic has (a
    handful would all fall on one side of the trainer's held-out split)."""
    from trainer.demo_model.corpus import NAMES, TASKS, make_prompt

    rng = random.Random(0)
    return [make_prompt(rng.randrange(len(TASKS)), rng.choice(NAMES), rng) for _ in range(n)]


def chat(http: httpx.Client, body: dict) -> tuple[str, httpx.Headers | None]:
    """One chat completion, streamed or not, read to its end: ("ok", headers), or what
    failed it (a status with the body's start, "stream cut", the exception's name) and None."""
    try:
        with http.stream("POST", "/v1/chat/completions", json=body) as resp:
            text = b"".join(resp.iter_bytes())
            if resp.status_code != 200:
                return f"{resp.status_code} {text[:80]!r}", None
            if body.get("stream") and not text.rstrip().endswith(b"data: [DONE]"):
                return "stream cut", None
            return "ok", resp.headers
    except httpx.HTTPError as exc:
        return type(exc).__name__, None
