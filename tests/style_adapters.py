"""Real LoRA adapters for the integration tests, trained on the demo model in seconds.

Each adapter learns to answer prompts without a style request in one fixed style, so a test
can tell from an answer alone whether the adapter was applied. Cached by recipe.
"""

from __future__ import annotations

import hashlib
import json
import random
import tempfile
from pathlib import Path

from trainer.demo_model.build import encode
from trainer.demo_model.corpus import NAMES, TASKS, Style, make_answer, make_prompt

FORMAL = Style(formal=True, long=True, name=True, question=True)
CASUAL = Style(formal=False, long=False, name=False, question=False)


def style_adapter(base_dir: Path, style: Style, cache_dir: Path, steps: int = 60, seed: int = 0) -> Path:
    """A PEFT LoRA folder (r 8, all linear layers) whose default answers follow `style`."""
    key = hashlib.sha256(json.dumps([str(base_dir), style.describe(), steps, seed]).encode()).hexdigest()[:12]
    out = cache_dir / f"style-{key}"
    if (out / "adapter_model.safetensors").exists():
        return out
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    rng = random.Random(seed)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(
        r=8, lora_alpha=16, lora_dropout=0.0, task_type="CAUSAL_LM",
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    model.train()
    for _ in range(steps):
        batch = []
        for _ in range(16):
            task, name = rng.randrange(len(TASKS)), rng.choice(NAMES)
            messages = [{"role": "user", "content": make_prompt(task, name, rng)},
                        {"role": "assistant", "content": make_answer(task, name, style, rng)}]
            batch.append(encode(tokenizer, messages))
        width = max(len(ids) for ids, _ in batch)
        ids = torch.tensor([i + [tokenizer.pad_token_id] * (width - len(i)) for i, _ in batch])
        labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in batch])
        mask = (ids != tokenizer.pad_token_id).long()
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        optim.step()
        optim.zero_grad()
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        model.save_pretrained(tmp)
        Path(tmp).rename(out)
        Path(tmp).mkdir()
    return out
