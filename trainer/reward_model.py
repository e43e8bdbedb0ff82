"""A reward model trained on the same feedback (TRL RewardTrainer, LoRA + score head), and
the win rate it gives a candidate against the current champion on held-out prompts.

The gate uses the win rate to refuse a candidate the users' own preferences clearly rank
below what is serving now; whether it is better is for the live A/B test to show.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from trainer.train_config import TrainConfig


def build_trainer(cfg: TrainConfig, base_model: str, out: Path, pairs: list[dict]):  # type: ignore[no-untyped-def]
    """TRL's RewardTrainer: LoRA on the base plus a trained score head (Bradley-Terry loss)."""
    import datasets
    import trl
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from trainer.models import load_kwargs, lora_config, trainer_args

    tokenizer = AutoTokenizer.from_pretrained(base_model)
    model = AutoModelForSequenceClassification.from_pretrained(base_model, num_labels=1, **load_kwargs(cfg.qlora))
    model.config.pad_token_id = tokenizer.pad_token_id
    args = trainer_args(cfg, out) | {"max_length": cfg.max_length}
    dataset = datasets.Dataset.from_list([{k: v for k, v in p.items() if k != "source"} for p in pairs])
    return trl.RewardTrainer(model=model, args=trl.RewardConfig(**args), train_dataset=dataset,
                             processing_class=tokenizer,
                             peft_config=lora_config(cfg.lora_r, cfg.lora_alpha, "SEQ_CLS", modules_to_save=["score"]))


def train_reward_model(base_model: str, pairs: list[dict], out: Path, steps: int = 60, seed: int = 0) -> Path:
    """Trains on `prompt/chosen/rejected` pairs; saves a PEFT adapter (with the score head) to `out`.
    The gate's own reward model, when no approved `--method reward` version exists."""
    cfg = TrainConfig(method="reward", steps=steps, seed=seed)
    trainer = build_trainer(cfg, base_model, out, pairs)
    trainer.train()
    model: Any = trainer.model
    model.save_pretrained(out)
    return out


def accuracy(reward: RewardModel, pairs: list[dict]) -> float:
    """Share of `prompt/chosen/rejected` pairs where the chosen answer scores higher."""
    right = sum(reward.score(p["prompt"], p["chosen"][0]["content"]) >
                reward.score(p["prompt"], p["rejected"][0]["content"]) for p in pairs)
    return right / len(pairs)


class RewardModel:
    def __init__(self, base_model: str, adapter: Path):
        import torch
        from peft import PeftModel
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(base_model)
        base = AutoModelForSequenceClassification.from_pretrained(base_model, num_labels=1, dtype=torch.float32)
        base.config.pad_token_id = self.tokenizer.pad_token_id
        self.model = PeftModel.from_pretrained(base, adapter).eval()

    def score(self, prompt: list[dict], answer: str) -> float:
        import torch

        text = self.tokenizer.apply_chat_template(prompt + [{"role": "assistant", "content": answer}], tokenize=False)
        ids = self.tokenizer(text, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            return float(self.model(**ids).logits[0, 0])


def generate(model, tokenizer, prompt: list[dict], seed: int, max_new_tokens: int = 48) -> str:  # type: ignore[no-untyped-def]
    import torch

    torch.manual_seed(seed)
    ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, do_sample=True, temperature=1.0, max_new_tokens=max_new_tokens,
                             pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


def win_rate(reward: RewardModel, base_model: str, candidate: Path, champion: Path | None,
             prompts: list, samples: int = 2, seed: int = 0) -> float:
    """Share of held-out prompts (samples each) where the reward model prefers the candidate's
    answer to the champion's (the base's when there is no champion); ties count half."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_model)

    def load(adapter: Path | None):  # type: ignore[no-untyped-def]
        base = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32)
        return (PeftModel.from_pretrained(base, adapter) if adapter else base).eval()

    challenger, incumbent = load(candidate), load(champion)
    rng, wins, total = random.Random(seed), 0.0, 0
    for prompt in prompts:
        for _ in range(samples):
            s = rng.randrange(1 << 30)
            ours = reward.score(prompt, generate(challenger, tokenizer, prompt, s))
            theirs = reward.score(prompt, generate(incumbent, tokenizer, prompt, s))
            wins += 1.0 if ours > theirs else 0.5 if ours == theirs else 0.0
            total += 1
    return wins / total
