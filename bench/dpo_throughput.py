"""DPO training throughput: loraloop's job settings vs TRL's default DPOConfig, same data,
same model, same steps, in one run.

    python bench/dpo_throughput.py [--rounds 3] [--steps 30]

Both arms train a LoRA (r 16, all linear layers) on the demo model with 8 pairs per step.
The baseline changes only what TRL's defaults cannot run with on a CPU (bf16=False);
loraloop's arm is trainer.train's settings (fp32, no gradient checkpointing, reference
log-probs precomputed once). Tokens/s = tokens TRL counted / train runtime; median of rounds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def run(arm: str, steps: int, base: str, examples: list[dict]) -> float:
    import datasets
    import peft
    import torch
    import trl
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.train import TARGET_MODULES

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    lora = peft.LoraConfig(r=16, lora_alpha=32, target_modules=TARGET_MODULES, task_type="CAUSAL_LM")
    with tempfile.TemporaryDirectory() as out:
        common = dict(output_dir=out, max_steps=steps, per_device_train_batch_size=8, learning_rate=2e-4,
                      report_to="none", save_strategy="no", logging_steps=steps, disable_tqdm=True, bf16=False)
        if arm == "loraloop":
            common |= dict(gradient_checkpointing=False, precompute_ref_log_probs=True, max_length=256,
                           use_cpu=True)
        trainer = trl.DPOTrainer(model=model, args=trl.DPOConfig(**common),
                                 train_dataset=datasets.Dataset.from_list(examples),
                                 processing_class=tokenizer, peft_config=lora)
        trainer.train()
    history = trainer.state.log_history
    tokens = max(h.get("num_tokens", 0) for h in history)
    runtime = next(h["train_runtime"] for h in history if "train_runtime" in h)
    return tokens / runtime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()

    from tests.integration.conftest import CACHE
    from tests.integration.test_training import preference_examples
    from trainer.demo_model import ensure_demo_model

    base = str(ensure_demo_model(CACHE))
    examples = preference_examples(8 * args.steps)
    results: dict[str, list[float]] = {"trl-default": [], "loraloop": []}
    for _ in range(args.rounds):
        for arm in results:
            results[arm].append(run(arm, args.steps, base, examples))
    default, ours = (statistics.median(results[a]) for a in ("trl-default", "loraloop"))
    print(f"DPO tokens/s on the demo model (CPU, 8 pairs/step, {args.steps} steps), median of {args.rounds}")
    for arm, values in results.items():
        print(f"  {arm:12} {statistics.median(values):8.0f}   (rounds: {' '.join(f'{v:.0f}' for v in values)})")
    print(f"  ratio loraloop / trl-default: {ours / default:.2f}")


if __name__ == "__main__":
    main()
