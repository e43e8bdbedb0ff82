"""RLHF with a learned reward model: the policy (base + LoRA) samples answers to prompts, the
reward model (`--method reward`) scores them, and the policy moves towards higher reward
under a KL penalty to the reference (the base with the adapter disabled).

TRL 1.16 no longer ships a PPOTrainer (it was dropped, also from trl.experimental); its
PPO-family trainer is GRPO: PPO's clipped policy-ratio objective and KL penalty, with the
advantage of each sample taken relative to the other samples for the same prompt instead
of from a learned value model (no second network to train, which also suits small data).

Reward hacking shows as drift from the reference: `beta` prices it during training, the
collapse checks during training keep the last checkpoint within the gate's sampled-KL
budget, and the gate judges the result like any other candidate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trainer.train_config import TrainConfig


def reward_function(base_model: str, reward_adapter: Path):  # type: ignore[no-untyped-def]
    """A TRL reward function scoring (prompt, completion) with a trainer.reward_model adapter."""
    from trainer.reward_model import RewardModel

    model = RewardModel(base_model, reward_adapter)

    def learned_reward(prompts: list, completions: list, **_: Any) -> list[float]:
        return [model.score(prompt, completion[0]["content"]) for prompt, completion in zip(prompts, completions,
                                                                                               strict=True)]

    return learned_reward


def build_trainer(cfg: TrainConfig, base_model: str, out: Path, prompts: list[dict], reward_adapter: Path):  # type: ignore[no-untyped-def]
    import datasets
    import trl
    from transformers import AutoTokenizer

    from trainer.models import load_causal_lm, lora_config, trainer_args

    tokenizer = AutoTokenizer.from_pretrained(base_model)
    args = trainer_args(cfg, out) | dict(
        beta=cfg.beta, num_generations=cfg.generations, max_completion_length=cfg.max_new_tokens,
        temperature=1.0, logging_steps=1)
    return trl.GRPOTrainer(
        model=load_causal_lm(base_model, cfg.qlora), args=trl.GRPOConfig(**args),
        reward_funcs=reward_function(base_model, reward_adapter),
        train_dataset=datasets.Dataset.from_list([{"prompt": p["prompt"]} for p in prompts]),
        processing_class=tokenizer, peft_config=lora_config(cfg.lora_r, cfg.lora_alpha))
