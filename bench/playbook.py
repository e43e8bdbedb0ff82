"""The post-training playbook on the demo model (CPU): what each method learns, how fast.

    python bench/playbook.py

Users like formal answers. SFT learns from formal conversations; the reward model from
formal-over-casual pairs; GRPO from the same prompts against that reward model. Each is
measured on held-out prompts against the base model in the same run: the share of sampled
answers that are formal and well formed, and (GRPO) the learned reward and sampled KL.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tests.integration.test_playbook import FORMAL, conversations, formal_share, heldout_prompts
    from tests.integration.test_training import preference_examples
    from trainer.demo_model import ensure_demo_model
    from trainer.reward_model import RewardModel, generate
    from trainer.train import main as run
    from trainer.train_config import TrainConfig

    home = Path(os.environ.get("LORALOOP_DATA_DIR", Path.home() / ".local/share/loraloop"))
    demo = ensure_demo_model(home)
    work = Path(tempfile.mkdtemp(prefix="loraloop-playbook-"))
    (work / "models").symlink_to(demo.parent)
    os.environ["LORALOOP_DATA_DIR"] = str(work)
    (work / "pairs.jsonl").write_text("\n".join(json.dumps(p) for p in preference_examples(320)))
    (work / "chats.jsonl").write_text("\n".join(json.dumps(c) for c in conversations(200, FORMAL, seed=5)))

    tokenizer = AutoTokenizer.from_pretrained(demo)

    def load(adapter: Path | None):  # type: ignore[no-untyped-def]
        base = AutoModelForCausalLM.from_pretrained(demo, dtype=torch.float32)
        return (PeftModel.from_pretrained(base, adapter) if adapter else base).eval()

    prompts = heldout_prompts(48)
    print(f"base: formal share {formal_share(load(None), tokenizer, prompts):.2f} on {len(prompts)} held-out prompts")
    results = {}
    for method, data, steps in (("sft", "chats.jsonl", 40), ("reward", "pairs.jsonl", 60), ("grpo", "pairs.jsonl", 30)):
        started = time.monotonic()
        result = run(TrainConfig(method=method, data=str(work / data), steps=steps, heldout_fraction=0.15))
        results[method] = result
        print(f"{method}: {steps} steps, {time.monotonic() - started:.0f} s data to verdict "
              f"({result.seconds:.0f} s training), {'approved' if result.approved else 'rejected'} "
              f"{'; '.join(result.reasons)}")
        report = json.loads((work / "reports" / f"{result.version}.json").read_text())["gate"]["metrics"]
        print(f"  gate: {report}")
        if method != "reward":
            print(f"  formal share {formal_share(load(result.adapter_dir), tokenizer, prompts):.2f}")
    judge = RewardModel(str(demo), results["reward"].adapter_dir)
    for name, adapter in (("base", None), ("grpo", results["grpo"].adapter_dir)):
        model = load(adapter)
        reward = statistics.mean(judge.score(p, generate(model, tokenizer, p, seed=i)) for i, p in enumerate(prompts))
        print(f"learned reward, {name}: {reward:.2f}")
    curve = [round(h["reward"], 2) for h in results["grpo"].log_history if "reward" in h]
    kl = [round(h["kl"], 4) for h in results["grpo"].log_history if "kl" in h]
    print(f"grpo reward curve (per step): {curve}\ngrpo KL to the reference (per step): {kl}")


if __name__ == "__main__":
    main()
