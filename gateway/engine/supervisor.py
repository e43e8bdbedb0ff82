"""Runs the embedded vLLM server as a child process and restarts it when it dies.

The gateway never imports vLLM or torch: the server runs in its own process (its own
memory, its own crash), reached over loopback like any fleet replica.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from gateway.settings import EngineSettings

log = logging.getLogger(__name__)
PR_SET_PDEATHSIG = 1


def new_api_key() -> str:
    """A fresh random key for one embedded vLLM (a new one every `loraloop serve`)."""
    return secrets.token_urlsafe(32)


def vllm_command(model: str, served_name: str, engine: EngineSettings, api_key: str = "") -> list[str]:
    """The launcher's command line; with `api_key`, every route but the probes requires it
    (gateway/engine/api_key.py: vLLM's own check leaves adapter loading at /adapters open)."""
    guard = ["--middleware", "gateway.engine.api_key.RequireApiKey"] if api_key else []
    return [
        sys.executable, "-m", "gateway.engine.vllm_launcher",
        "--model", model, "--served-model-name", served_name,
        "--host", "127.0.0.1", "--port", str(engine.port),
        "--enable-lora", "--max-lora-rank", str(engine.max_lora_rank),
        "--max-loras", str(engine.max_loras), "--max-model-len", str(engine.max_model_len),
        "--dtype", engine.dtype, *guard, *engine.extra_args,
    ]


def vllm_env(engine: EngineSettings, api_key: str = "") -> dict[str, str]:
    """The launcher's environment. The key travels here, not on the command line: any local
    user can read a process's arguments, only its owner its environment."""
    env = dict(os.environ)
    env.update({
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",  # the fleet loads adapters at run time
        "VLLM_CPU_KVCACHE_SPACE": str(engine.kv_cache_gib),
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        "HF_HUB_OFFLINE": env.get("HF_HUB_OFFLINE", "1"),
    })
    if api_key:
        env["VLLM_API_KEY"] = api_key  # vLLM's --api-key, and RequireApiKey's
    if engine.responses_store:
        env["VLLM_ENABLE_RESPONSES_API_STORE"] = "1"
    return env


def _term_when_parent_dies() -> None:
    """Runs in the child before exec: if the gateway is killed (even -9), vLLM gets SIGTERM
    and shuts its own workers down, instead of holding the port and memory as an orphan."""
    if sys.platform == "linux":
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class EngineSupervisor:
    """Keeps one vLLM server alive: start, wait until healthy, restart with backoff on exit.

    With `api_key`, the server requires it (`Authorization: Bearer`) on every route but
    /health and /metrics, across restarts: what the gateway sends as LORALOOP_UPSTREAM_API_KEY."""

    def __init__(self, model: str, served_name: str, engine: EngineSettings, log_path: Path, api_key: str = ""):
        self.api_key = api_key
        self.command = vllm_command(model, served_name, engine, api_key)
        self.env = vllm_env(engine, api_key)
        self.url = f"http://127.0.0.1:{engine.port}"
        self.startup_timeout_s = engine.startup_timeout_s
        self.log_path = log_path
        self.process: subprocess.Popen | None = None
        self.restarts = 0
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None

    def start(self, wait: bool = True) -> None:
        self._spawn()
        if wait:
            self.wait_healthy()
        self._watcher = threading.Thread(target=self._watch, name="vllm-supervisor", daemon=True)
        self._watcher.start()

    def _spawn(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log.info("starting vLLM: %s (log: %s)", " ".join(self.command), self.log_path)
        with open(self.log_path, "ab") as logfile:
            # Own process group, so stopping it also stops the engine processes vLLM starts.
            self.process = subprocess.Popen(self.command, env=self.env, stdout=logfile,
                                            stderr=subprocess.STDOUT, start_new_session=True,
                                            preexec_fn=_term_when_parent_dies)

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"vLLM exited with {self.process.returncode}; see {self.log_path}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"vLLM not healthy after {self.startup_timeout_s} s; see {self.log_path}")

    def _watch(self) -> None:
        backoff = 1.0
        while not self._stopping.is_set():
            assert self.process is not None
            code = self.process.wait()
            if self._stopping.is_set():
                return
            self.restarts += 1
            log.error("vLLM exited with %s; restart %d in %.0f s", code, self.restarts, backoff)
            self._kill_group()
            if self._stopping.wait(backoff):
                return
            backoff = min(backoff * 2, 30.0)
            self._spawn()
            try:
                self.wait_healthy()
                backoff = 1.0
            except (RuntimeError, TimeoutError) as exc:
                log.error("vLLM restart failed: %s", exc)

    def _kill_group(self, sig: int = signal.SIGKILL) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)

    def stop(self, grace_s: float = 10.0) -> None:
        self._stopping.set()
        if self.process is None:
            return
        self._kill_group(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(grace_s)
        self._kill_group(signal.SIGKILL)
        self.process.wait()
