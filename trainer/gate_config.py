"""The eval gate's settings (GateConfig): a leaf module, light to import (no torch), so the
trainer's collapse checks and the CLIs can share the gate's limits. The checks themselves
are trainer/gate.py's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from adapters.integrity import SERVABLE_MODULES

__all__ = ["GateConfig"]


@dataclass
class GateConfig:
    max_lora_rank: int = field(default=16, metadata={"help": "The engine's --max-lora-rank."})
    allowed_modules: tuple[str, ...] = field(
        default=SERVABLE_MODULES,
        metadata={"help": "LoRA target modules the engine can serve."})
    beta: float = field(default=0.1, metadata={"help": "Implicit-reward scale for held-out pairs."})
    min_pair_accuracy: float = field(default=0.5, metadata={"help": "Held-out preference accuracy needed."})
    max_sampled_kl: float = field(default=2.0, metadata={"help": "Reject above this sampled KL (nats)."})
    max_implausible_share: float = field(default=0.20, metadata={
        "help": "Reject at or above this share. Measured on the demo model: healthy adapters <= 0.08, "
                "collapsed ones >= 0.39."})
    implausible_nll: float = field(default=1.0, metadata={"help": "Base NLL (nats/token) called implausible."})
    max_repetition: float = field(default=0.5, metadata={"help": "Reject above this repeated-4-gram share."})
    min_win_rate: float = field(default=0.35, metadata={"help": "Refuse below this win rate vs the champion."})
    max_perplexity_ratio: float = field(default=1.5, metadata={
        "help": "Refuse above this perplexity on reference conversations, relative to the base (forgetting)."})
    min_reward_accuracy: float = field(default=0.6, metadata={
        "help": "A reward model must rank this share of held-out pairs right."})
    max_new_tokens: int = field(default=48, metadata={"help": "Sample length."})
    samples_per_prompt: int = field(default=4, metadata={
        "help": "Answers sampled per held-out prompt for the KL, implausibility and repetition checks. "
                "One answer each from 16 prompts put a healthy adapter's sampled KL anywhere in 0.8-2.2 "
                "(the limit is 2.0) depending on the sampling seed; four each quarter that variance."})
    seed: int = field(default=0, metadata={"help": "Sampling seed."})
