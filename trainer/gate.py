"""The eval gate: may a candidate adapter reach users?

Checks, on held-out data the run never trained on:
1. integrity (adapters/integrity.py): readable, finite weights; rank, target modules and
   tensor shapes the engine can serve on this base model;
2. preference: held-out pairs' implicit reward accuracy and margin (DPO's
   beta * (log pi - log pi_ref), chosen minus rejected) must beat chance;
3. anti-collapse, with no reward model: the candidate samples answers to held-out prompts
   and the adapter-disabled base judges them. Sampled KL (mean of log pi - log pi_ref per
   sample), the share of samples the base finds implausible (NLL > 1 nat/token), and
   repetition. Measured on this project's demo model (DPO, KTO and RPO runs): teacher-forced
   metrics stay healthy while a collapsed adapter's samples are garbage; these numbers
   separated healthy (KL <= 0.68, share <= 0.08) from collapsed (KL >= 7, share >= 0.39).
4. forgetting: the candidate's perplexity on reference conversations (an operator's file,
   or the base's own answers to the held-out prompts) over the base's perplexity on them.
   A fine-tune that has overwritten what the base could do shows as a ratio far above 1.
5. with a reward model trained on the same feedback (trainer/reward_model.py): the win rate
   of the candidate's answers against the champion's on held-out prompts. A candidate the
   users' preferences clearly rank below what serves now is refused; whether it is better
   is for the live A/B test to show.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from adapters import integrity as integrity_checks
from trainer.gate_config import GateConfig


@dataclass
class GateReport:
    passed: bool
    reasons: list[str]
    metrics: dict[str, float]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def integrity(adapter_dir: Path, cfg: GateConfig, base_model: str | None = None) -> list[str]:
    """adapters/integrity.py's checks with the gate's limits (and the base's shapes when given)."""
    base = integrity_checks.base_model_config(base_model) if base_model else None
    return integrity_checks.problems(adapter_dir, integrity_checks.Limits(
        cfg.max_lora_rank, tuple(cfg.allowed_modules), base))


def _sequence_logps(model, input_ids, attention_mask, start: int):  # type: ignore[no-untyped-def]
    """Per-token log-probs of input_ids[:, start:] (zero where masked)."""
    import torch

    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, start - 1:-1]
    logps = torch.log_softmax(logits.float(), -1).gather(-1, input_ids[:, start:, None])[..., 0]
    return logps * attention_mask[:, start:]


def pair_metrics(model, tokenizer, pairs: list[dict], beta: float) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Held-out implicit-reward accuracy and mean margin over `prompt/chosen/rejected` pairs."""
    import torch

    margins = []
    for pair in pairs:
        prompt = tokenizer.apply_chat_template(pair["prompt"], add_generation_prompt=True, tokenize=False)
        rewards = []
        for side in ("chosen", "rejected"):
            text = prompt + pair[side][0]["content"] + tokenizer.eos_token
            ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)
            start = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
            policy = _sequence_logps(model, ids["input_ids"], ids["attention_mask"], start).sum()
            with model.disable_adapter():
                ref = _sequence_logps(model, ids["input_ids"], ids["attention_mask"], start).sum()
            rewards.append(beta * (policy - ref))
        margins.append(float(rewards[0] - rewards[1]))
    tensor = torch.tensor(margins)
    return {"pair_accuracy": float((tensor > 0).float().mean()), "pair_margin": float(tensor.mean())}


def sample_metrics(model, tokenizer, prompts: list[Any], cfg: GateConfig) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Sampled KL to the base, the share of samples the base finds implausible, repetition,
    over `cfg.samples_per_prompt` answers to each prompt (one batched generate per prompt)."""
    import torch

    torch.manual_seed(cfg.seed)
    eos = model.generation_config.eos_token_id
    eos = eos if isinstance(eos, list) else [eos if eos is not None else tokenizer.eos_token_id]
    # (the training guard runs this on the training model: on CUDA there)
    eos_ids = torch.tensor([e for e in eos if e is not None], dtype=torch.long, device=model.device)
    kls, implausible, repeated = [], 0, []
    tokenizer.padding_side = "left"
    for messages in prompts:
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                            return_dict=True).to(model.device)
        with torch.no_grad():
            out = model.generate(**ids, do_sample=True, temperature=1.0, top_p=1.0,
                                 max_new_tokens=cfg.max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                 num_return_sequences=cfg.samples_per_prompt)
        start = ids["input_ids"].shape[1]
        # each answer ends at its first end-of-sequence token; what follows is padding
        is_eos = torch.isin(out[:, start:], eos_ids).long()  # no EOS known: answers end at the limit
        answer_mask = (is_eos.cumsum(1) - is_eos) == 0
        mask = torch.cat([torch.ones_like(out[:, :start]), answer_mask.long()], 1)
        policy = _sequence_logps(model, out, mask, start)
        with model.disable_adapter():
            ref = _sequence_logps(model, out, mask, start)
        for row in range(out.shape[0]):
            n = max(int(answer_mask[row].sum()), 1)
            kls.append(float((policy[row] - ref[row]).sum()))
            implausible += float(-ref[row].sum() / n) > cfg.implausible_nll
            tokens = out[row, start:][answer_mask[row]].tolist()
            grams = [tuple(tokens[i:i + 4]) for i in range(max(len(tokens) - 3, 0))]
            repeated.append(1 - len(set(grams)) / len(grams) if grams else 0.0)
    return {"sampled_kl": sum(kls) / len(kls), "implausible_share": implausible / len(kls),
            "repetition": sum(repeated) / len(repeated)}


def collapse_reasons(metrics: dict[str, float], cfg: GateConfig) -> list[str]:
    """Why `sample_metrics`' figures say the adapter collapsed (empty: healthy). The gate and
    the training guard (trainer/train.py) share this verdict."""
    reasons = []
    if not math.isfinite(metrics["sampled_kl"]) or metrics["sampled_kl"] > cfg.max_sampled_kl:
        reasons.append(f"sampled KL to the base {metrics['sampled_kl']:.2f} > {cfg.max_sampled_kl} "
                       "(the adapter drifted far from the base: collapse or reward hacking)")
    if metrics["implausible_share"] >= cfg.max_implausible_share:
        reasons.append(f"{metrics['implausible_share']:.0%} of samples are implausible to the base "
                       f"(limit {cfg.max_implausible_share:.0%}): degenerate output")
    if metrics["repetition"] > cfg.max_repetition:
        reasons.append(f"repetition {metrics['repetition']:.2f} > {cfg.max_repetition}")
    return reasons


def base_answers(model, tokenizer, prompts: list[Any], cfg: GateConfig) -> list[list[dict]]:  # type: ignore[no-untyped-def]
    """The base's own sampled answers to `prompts`, as conversations (adapter disabled)."""
    import torch

    torch.manual_seed(cfg.seed + 1)
    conversations = []
    with model.disable_adapter():
        for messages in prompts:
            ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                                return_dict=True)
            with torch.no_grad():
                out = model.generate(**ids, do_sample=True, max_new_tokens=cfg.max_new_tokens,
                                     pad_token_id=tokenizer.pad_token_id)
            answer = tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
            conversations.append([*messages, {"role": "assistant", "content": answer}])
    return conversations


def perplexity_ratio(model, tokenizer, conversations: list[list[dict]]) -> float:  # type: ignore[no-untyped-def]
    """exp(candidate NLL - base NLL) per assistant token, over `conversations`."""
    import torch

    from trainer.sft import assistant_masked

    total = {"candidate": 0.0, "base": 0.0}
    tokens = 0
    for messages in conversations:
        encoded = assistant_masked(tokenizer, messages)
        ids = torch.tensor([encoded["input_ids"]])
        mask = torch.tensor(encoded["assistant_masks"][1:], dtype=torch.float32)
        for side in total:
            with torch.no_grad():
                if side == "base":
                    with model.disable_adapter():
                        logits = model(input_ids=ids).logits[0, :-1]
                else:
                    logits = model(input_ids=ids).logits[0, :-1]
            nll = -torch.log_softmax(logits.float(), -1).gather(-1, ids[0, 1:, None])[:, 0]
            total[side] += float((nll * mask).sum())
        tokens += int(mask.sum())
    return math.exp((total["candidate"] - total["base"]) / max(tokens, 1))


def evaluate_reward_model(base_model: str, adapter_dir: Path, heldout_pairs: list[dict],
                          cfg: GateConfig | None = None) -> GateReport:
    """A reward model's gate: integrity, then its accuracy on held-out pairs it never saw."""
    from trainer.reward_model import RewardModel, accuracy

    cfg = cfg or GateConfig()
    reasons = integrity(adapter_dir, cfg, base_model)
    if reasons:
        return GateReport(False, reasons, {})
    if not heldout_pairs:
        return GateReport(False, ["no held-out pairs to measure the reward model's accuracy on"], {})
    metrics = {"reward_accuracy": accuracy(RewardModel(base_model, adapter_dir), heldout_pairs),
               "heldout_pairs": float(len(heldout_pairs))}
    if metrics["reward_accuracy"] < cfg.min_reward_accuracy:
        reasons.append(f"held-out accuracy {metrics['reward_accuracy']:.2f} < {cfg.min_reward_accuracy} "
                       "(the reward model does not tell the users' preferred answers apart)")
    return GateReport(not reasons, reasons, {k: round(v, 4) for k, v in metrics.items()})


def evaluate(base_model: str, adapter_dir: Path, heldout_pairs: list[dict], heldout_prompts: list[Any],
             cfg: GateConfig | None = None, reward_model: Path | None = None,
             champion: Path | None = None, reference: list[list[dict]] | None = None) -> GateReport:
    """Runs every check; the candidate passes only if none objects. With `reward_model`
    (a trainer.reward_model adapter) also the win rate against `champion` (None: the base).
    `reference`: conversations for the forgetting check (None: the base's own answers)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = cfg or GateConfig()
    reasons = integrity(adapter_dir, cfg, base_model)
    if reasons:
        return GateReport(False, reasons, {})
    tokenizer = AutoTokenizer.from_pretrained(base_model)
    base = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, adapter_dir).eval()
    metrics: dict[str, float] = {}
    if heldout_pairs:
        metrics |= pair_metrics(model, tokenizer, heldout_pairs, cfg.beta)
        if metrics["pair_accuracy"] < cfg.min_pair_accuracy:
            reasons.append(f"held-out preference accuracy {metrics['pair_accuracy']:.2f} "
                           f"< {cfg.min_pair_accuracy:.2f}")
    metrics |= sample_metrics(model, tokenizer, heldout_prompts, cfg)
    reasons += collapse_reasons(metrics, cfg)
    # chat prompts only: a plain-text prompt (the completions API) has no turns to mask by
    reference = reference or base_answers(model, tokenizer, [p for p in heldout_prompts if isinstance(p, list)], cfg)
    if reference:
        metrics["perplexity_ratio"] = perplexity_ratio(model, tokenizer, reference)
    if reference and not metrics["perplexity_ratio"] <= cfg.max_perplexity_ratio:
        reasons.append(f"perplexity on reference conversations {metrics['perplexity_ratio']:.2f}x the base's "
                       f"(limit {cfg.max_perplexity_ratio}x): the adapter forgets what the base could do")
    if reward_model is not None:
        from trainer.reward_model import RewardModel, win_rate

        metrics["win_rate"] = win_rate(RewardModel(base_model, reward_model), base_model, adapter_dir, champion,
                                       heldout_prompts[:8], seed=cfg.seed)
        if metrics["win_rate"] < cfg.min_win_rate:
            reasons.append(f"win rate {metrics['win_rate']:.2f} against the "
                           f"{'champion' if champion else 'base'} < {cfg.min_win_rate} (reward model)")
    return GateReport(not reasons, reasons, {k: round(v, 4) for k, v in metrics.items()})
