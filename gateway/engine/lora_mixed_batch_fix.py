"""Fix for vLLM's CPU LoRA ops serving base-model rows with an adapter's weights.

In a batch that mixes base-model and adapter requests, rows without an adapter carry LoRA
index -1. The PyTorch ops in `vllm/lora/ops/torch_ops/lora_ops.py` (used by the CPU
backend) index the stacked weights with it, and -1 wraps around to the last adapter slot,
so base answers come out with that adapter applied (measured: 7 of 7 wrong under mixed load;
upstream fix proposed in vllm-project/vllm PR 48421).

The fix clamps the index and zeroes the input rows that use no adapter, so those rows get
no LoRA contribution. It runs in the vLLM process only (see `vllm_launcher`); GPU backends
use other kernels and are left alone.
"""

from __future__ import annotations

import functools
import logging
import os

log = logging.getLogger(__name__)

PATCHED = ("bgmv_shrink", "bgmv_expand", "bgmv_expand_slice")


def _masked(op):  # type: ignore[no-untyped-def]
    @functools.wraps(op)
    def wrapper(inputs, lora_weights, output_tensor, lora_indices_tensor, *args, **kwargs):  # type: ignore[no-untyped-def]
        no_lora = lora_indices_tensor < 0
        if bool(no_lora.any()):
            inputs = inputs.masked_fill(no_lora.unsqueeze(-1), 0)
            lora_indices_tensor = lora_indices_tensor.clamp(min=0)
        return op(inputs, lora_weights, output_tensor, lora_indices_tensor, *args, **kwargs)

    wrapper.__loraloop_fixed__ = True  # type: ignore[attr-defined]
    return wrapper


def apply() -> bool:
    """Patches the ops in place; returns False if this vLLM has no CPU torch ops to fix."""
    try:
        from vllm.lora.ops.torch_ops import lora_ops
        from vllm.lora.punica_wrapper import punica_cpu
    except ImportError:
        return False
    import vllm.lora.ops.torch_ops as torch_ops

    for name in PATCHED:
        original = getattr(lora_ops, name)
        if getattr(original, "__loraloop_fixed__", False):
            continue
        fixed = _masked(original)
        # punica_cpu imported the functions by name; sgmv_* look them up in lora_ops.
        for module in (lora_ops, torch_ops, punica_cpu):
            if hasattr(module, name):
                setattr(module, name, fixed)
    log.info("loraloop: mixed-batch LoRA fix applied in process %d", os.getpid())
    return True
