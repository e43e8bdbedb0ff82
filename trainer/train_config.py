"""`loraloop train`'s settings (TrainConfig) and the methods it knows: a leaf module, importing
nothing of the project and no training library, so anything may import it (the scheduler, the
trainers' `build_trainer`s, type annotations) without pulling in torch or an import cycle.
The methods themselves are described in trainer/train.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["AUTO", "DEFAULT_LEARNING_RATE", "METHODS", "TrainConfig"]

# the feedback-store format each method trains on
METHODS = {"dpo": "dpo", "kto": "kto", "sft": "sft", "reward": "dpo", "grpo": "kto", "best-of-n": "kto"}
# learning rates that trained well on the demo model (tests, bench/README.md); 0 picks these.
# best-of-n ends in SFT on the answers its reward model picked: SFT's rate.
DEFAULT_LEARNING_RATE = {"dpo": 2e-4, "kto": 2e-4, "sft": 5e-4, "reward": 1e-3, "grpo": 3e-4, "best-of-n": 5e-4}
AUTO = "auto"  # the method chosen from the data at the start of the run (trainer/method_choice.py)


@dataclass
class TrainConfig:
    method: str = field(default="dpo", metadata={
        "help": "dpo, kto, sft, reward, grpo, best-of-n, or auto: chosen from the data (see above)."})
    base_model: str = field(default="", metadata={"help": "HF id or path; empty: the demo model."})
    data: str = field(default="", metadata={"help": "JSONL in TRL format; empty: the feedback store."})
    steps: int = field(default=100, metadata={
        "help": "Optimizer steps (at most: SFT may stop early; best-of-n's SFT at least, five passes over its picks)."})
    batch_size: int = field(default=8, metadata={"help": "Examples per step (GRPO: completions per step)."})
    learning_rate: float = field(default=0.0, metadata={"help": "AdamW learning rate; 0: the method's default."})
    beta: float = field(default=0.1, metadata={"help": "DPO/KTO/GRPO beta: the price of drifting from the reference."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank (the engine's max rank bounds it)."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha."})
    max_length: int = field(default=256, metadata={"help": "Longest prompt + answer in tokens."})
    seed: int = field(default=0, metadata={"help": "Seed for init and data order."})
    prefix: str = field(default="", metadata={"help": "Version name prefix; default: the method."})
    register: bool = field(default=True, metadata={"help": "Publish to the store and register."})
    qlora: bool = field(default=False, metadata={
        "help": "Load the base in 4-bit NF4 (bitsandbytes; CUDA GPUs only)."})
    check_every: int = field(default=20, metadata={
        "help": "Steps between collapse checks (at least; at most 6 checks a run); the last healthy checkpoint "
                "is what is kept (0: off)."})
    heldout_fraction: float = field(default=0.1, metadata={
        "help": "Share of prompts (of a --data file) held out for the gate."})
    eval_every: int = field(default=20, metadata={"help": "SFT: steps between held-out validation losses (0: off)."})
    patience: int = field(default=3, metadata={"help": "SFT: stop after this many evaluations without improvement."})
    reward_model: str = field(default="", metadata={
        "help": "GRPO's reward and the gate's judge: a reward version name or folder; empty: the newest approved."})
    generations: int = field(default=4, metadata={
        "help": "GRPO and best-of-n: answers sampled per prompt (GRPO's group; best-of-n keeps the best)."})
    sample_prompts: int = field(default=640, metadata={
        "help": "best-of-n: most prompts sampled (the thumbs' first, then recent unrated ones)."})
    from_champion: bool = field(default=False, metadata={
        "help": "best-of-n: go on training the champion's adapter on its best answers, instead of a fresh "
                "adapter from the base (each generation starts where the last one ended)."})
    sample_max_new_tokens: int = field(default=96, metadata={
        "help": "best-of-n: longest sampled answer in tokens; an answer cut off there is never kept."})
    desirable_weight: float = field(default=0.0, metadata={
        "help": "KTO: weight of liked answers; 0: set from the label balance (with undesirable_weight)."})
    undesirable_weight: float = field(default=0.0, metadata={
        "help": "KTO: weight of disliked answers; 0: set from the label balance."})
    min_pairs: int = field(default=64, metadata={
        "help": "auto: DPO when the data has this many training pairs (same prompt or regeneration) "
                "and too few thumbs for best-of-n's judge."})
    max_new_tokens: int = field(default=48, metadata={"help": "GRPO: longest sampled answer in tokens."})
    reward_model_steps: int = field(default=60, metadata={
        "help": "DPO without an approved reward model: steps of a gate-only one (0: no win-rate check)."})
    reference_data: str = field(default="", metadata={
        "help": "Conversations (messages JSONL) the base must stay good at (gate's forgetting check); "
                "empty: the base's own answers to held-out prompts."})
    alias: str = field(default="default", metadata={"help": "Whose champion the candidate is compared with."})
    cross_tenant: bool = field(default=False, metadata={
        "help": "A shared --alias trains on every tenant that owns no alias, not only tenant 'default'."})

    def __post_init__(self) -> None:
        if self.method == "ppo":
            raise ValueError("TRL 1.16 has no PPOTrainer any more; use --method grpo (PPO's clipped objective "
                             "and KL penalty, with group-relative advantages instead of a value model)")
        if self.method not in METHODS and self.method != AUTO:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, not {self.method!r}")
        if self.steps < 1 or self.batch_size < 1 or self.lora_r < 1:
            raise ValueError("steps, batch_size and lora_r must be positive")
        if self.method in ("kto", AUTO) and self.batch_size < 2:
            raise ValueError("KTO needs batch_size >= 2 (it estimates its KL term across the batch)")
        if self.method == "grpo" and (self.generations < 2 or self.batch_size % self.generations):
            raise ValueError("GRPO needs generations >= 2 and a batch_size that is a multiple of it")
        if not self.learning_rate and self.method != AUTO:  # auto: the chosen method's, once chosen
            self.learning_rate = DEFAULT_LEARNING_RATE[self.method]

    @property
    def kind(self) -> str:
        """What the run makes: a chat adapter (`policy`) or a `reward` model."""
        return "reward" if self.method == "reward" else "policy"
