"""Best-of-n (rejection sampling) from sparse, unpaired, noisy thumbs.

Real users rate a few answers, complain more than they praise, and disagree: their thumbs
make few same-prompt pairs, and SFT on the thumbs-up learns every wrong thumb with the
right ones. Here the thumbs train a judge instead, and the judge picks what to learn:

1. a reward model (trainer/reward_model.py: LoRA + score head, TRL's RewardTrainer) on
   the store's same-prompt and regeneration pairs first (the clearest comparisons: one
   request, two answers), then pairs of a liked and a disliked answer, any prompts each
   (Bradley-Terry on labels: it learns to score a liked answer above a disliked one, which
   is what the thumbs say);
2. its gate: on the held-out split's thumbs (prompts it never saw) it must rank liked over
   disliked answers better than chance, significantly (`judge_passes`), or the run makes
   no candidate;
3. the champion (the alias's current adapter, or the base) samples `generations` answers
   for each of up to `sample_prompts` training prompts (the rated ones, then recent unrated
   requests to the alias: trainer.data.served_prompts); the reward model keeps the best one;
4. SFT on those, from the base, five passes over them (`sft_steps`): each generation learns
   from the champion's best answers, so generations compound (offline, a request-dependent
   taste: generation 1 0.84, generation 2 0.95 held-out; `--from-champion`, SFT that goes on
   training the champion's adapter, measured the same 0.95, so the default is the simpler
   one), and the data is always the policy's own, plausible text (SFT on own samples kept
   the demo model healthy where DPO and KTO collapsed).

The gate then judges the candidate as any other, with this reward model's win rate
against the champion among its checks.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from pathlib import Path
from statistics import NormalDist
from typing import Any, TypeGuard

from trainer.train_config import TrainConfig

JUDGE_MAX_STEPS = 400
JUDGE_MAX_PAIRS = JUDGE_MAX_STEPS * TrainConfig.batch_size // 2  # what two passes of the longest run see
# SFT on the picked answers: five passes over them (at least the configured steps, at most
# 480). The style a taste asks for lives in a few tokens of each answer, so it is learned
# well after the rest: on 640 picked answers for a request-dependent taste (0.87 of them
# liked by the TRUE taste), 240 steps reached 0.78 on held-out prompts and ~300 steps 0.87
# (bench/README.md); the demo's 80 steps are one pass.
SFT_EPOCHS, SFT_MAX_STEPS = 5, 480
SAMPLE_BATCH = 16  # prompts per generate call: batched, sampling is several times faster on a CPU


def is_chat(example: dict) -> bool:
    """A chat example (turns as dicts); completions-API thumbs (plain text) are not judged."""
    prompt, completion = example.get("prompt"), example.get("completion")
    return isinstance(prompt, list) and isinstance(completion, list) and \
        all(isinstance(t, dict) for t in (*prompt, *completion))


def label_pairs(labelled: list[dict], seed: int = 0, per_example: int = 2, most: int | None = None) -> list[dict]:
    """Implicit-prompt preference pairs (`chosen`/`rejected` as whole conversations) from
    chat `prompt/completion/label` examples: each example of the more common label is used
    `per_example` times, each time against a random one of the rarer label. With `most`, at
    most that many pairs, from a random sample of the more common label (a judge trains a
    bounded number of steps, so a million thumbs need not become two million pairs)."""
    liked = [e for e in labelled if e["label"] and is_chat(e)]
    disliked = [e for e in labelled if not e["label"] and is_chat(e)]
    if not liked or not disliked:
        return []
    rng = random.Random(seed)
    many, few = (liked, disliked) if len(liked) >= len(disliked) else (disliked, liked)
    if most is not None and len(many) * per_example > most:
        many = rng.sample(many, max(most // per_example, 1))
    pairs = []
    for i in range(len(many) * per_example):
        one, other = many[i % len(many)], rng.choice(few)
        good, bad = (one, other) if one["label"] else (other, one)
        pairs.append({"chosen": _conversation(good), "rejected": _conversation(bad)})
    return pairs


def _conversation(example: dict) -> list[dict]:
    return [*example["prompt"], *example["completion"]]


def auc(scores: list[tuple[float, bool]]) -> float:
    """Share of (liked, disliked) pairs the scores rank right, ties half: the area under the
    ROC curve. With noisy labels its ceiling is below 1; chance is 0.5."""
    liked = sorted(s for s, label in scores if label)
    disliked = [s for s, label in scores if not label]
    if not liked or not disliked:
        return float("nan")
    import bisect

    right = sum(len(liked) - bisect.bisect_right(liked, d) + 0.5 * (bisect.bisect_right(liked, d) -
                                                                    bisect.bisect_left(liked, d))
                for d in disliked)
    return right / (len(liked) * len(disliked))


# The judge's gate. A fixed AUC bar on ~10% of the thumbs (14-46 of them in the live runs)
# mostly measured the noise: the AUC's standard error there is 0.07-0.16, so 0.65 on 14
# thumbs passed a judge that may be chance while 0.59 on 23 failed one that may be good.
# Now: better than chance at a one-sided 10% level (the Mann-Whitney test the AUC is the
# statistic of), and at least JUDGE_MIN_AUC, so a huge held-out set cannot pass a judge too
# weak to pick anything. With 20% of thumbs flipped, a perfect judge measures only ~0.76.
JUDGE_ALPHA, JUDGE_MIN_AUC = 0.1, 0.55


def judge_passes(measured: float, liked: int, disliked: int) -> tuple[bool, float]:
    """(passed, one-sided p-value against chance) for an AUC `measured` on `liked` and
    `disliked` held-out thumbs. Mann-Whitney's U = AUC x liked x disliked, its exact null
    distribution whenever that is cheap (one label with few thumbs is the usual case, and
    there the normal approximation would pass a chance-level judge far more often than
    JUDGE_ALPHA: 20% at 1 liked vs 4 disliked), else the normal approximation with a
    continuity correction. Ties count half in the AUC and are not corrected for, which
    errs towards failing."""
    if not liked or not disliked or math.isnan(measured):
        return False, 1.0
    u = measured * liked * disliked
    rare, common = sorted((liked, disliked))
    if rare * rare * common <= EXACT_MAX_WORK:
        p_value = exact_upper_tail(liked, disliked, math.ceil(u - 1e-9))
    else:
        spread = math.sqrt(liked * disliked * (liked + disliked + 1) / 12)
        p_value = 1 - NormalDist().cdf((u - 0.5 - liked * disliked / 2) / spread)
    return p_value < JUDGE_ALPHA and measured >= JUDGE_MIN_AUC, p_value


EXACT_MAX_WORK = 2_000_000  # additions of the exact tail (rare^2 x common): well under a second


def exact_upper_tail(m: int, n: int, u: int) -> float:
    """P(U >= u) for Mann-Whitney's U of m vs n values in random order. The number of
    orders with U = k is the coefficient of q^k in the Gaussian binomial [m+n choose m],
    the product of (1 - q^(n+i)) / (1 - q^i) for i = 1..m, computed as power series cut at
    degree m*n (exact there: a coefficient of a quotient depends only on lower ones)."""
    m, n = min(m, n), max(m, n)
    top = m * n
    ways = [1] + [0] * top
    for i in range(1, m + 1):
        for k in range(top, n + i - 1, -1):  # x (1 - q^(n+i))
            ways[k] -= ways[k - n - i]
        for k in range(i, top + 1):  # / (1 - q^i)
            ways[k] += ways[k - i]
    return sum(ways[max(u, 0):]) / sum(ways)


def as_conversations(pair: dict) -> dict | None:
    """A DPO pair (`prompt/chosen/rejected`, chat turns) as whole conversations; None for
    completions-API pairs (plain text), which the chat judge does not score."""
    prompt, chosen, rejected = pair.get("prompt"), pair.get("chosen"), pair.get("rejected")
    if not (_turns(prompt) and _turns(chosen) and _turns(rejected)):
        return None
    return {"chosen": [*prompt, *chosen], "rejected": [*prompt, *rejected]}


def _turns(value: object) -> TypeGuard[list[dict]]:
    return isinstance(value, list) and all(isinstance(t, dict) for t in value)


def judge_pairs(thumbs: list[dict], same_prompt: Sequence[dict], most: int, seed: int) -> tuple[list[dict], int]:
    """(at most `most` pairs for the judge, how many of them are same-prompt pairs): those
    first, at most half of them (a client that plants regeneration links, or one popular
    prompt's cross product of answers, must not push every thumb out), then
    liked-over-disliked pairs of the thumbs (`label_pairs`)."""
    pairs = [c for c in map(as_conversations, same_prompt) if c is not None][:most // 2]
    explicit = len(pairs)
    if most - explicit > 1:
        pairs += label_pairs([e for e in thumbs if "label" in e], seed, most=most - explicit)
    return pairs, explicit


def train_judge(cfg: TrainConfig, base_model: str, train: list[dict], heldout: list[dict],
                out: Path, same_prompt: Sequence[dict] = ()) -> tuple[Path | None, dict[str, float | None]]:
    """Trains and gates the reward model on the `train` thumbs and the `same_prompt` pairs
    (DPO format): (its folder, or None when it failed its gate; metrics)."""
    from trainer.reward_model import RewardModel, build_trainer

    # Two passes over the pairs (at least the configured steps, at most 400): on 740 realistic
    # thumbs of a request-dependent taste (848 pairs), 60 steps ranked held-out answers by the
    # TRUE taste at AUC 0.76, 200 steps at 0.86, 400 at 0.90 (bench/README.md). More pairs
    # than 400 steps pass over twice are never built.
    batch = TrainConfig.batch_size
    pairs, explicit = judge_pairs(train, same_prompt, JUDGE_MAX_PAIRS, cfg.seed)
    if not pairs:
        return None, {"judge_pairs": 0.0}
    steps = max(cfg.reward_model_steps or 60, min(JUDGE_MAX_STEPS, math.ceil(2 * len(pairs) / batch)))
    trainer = build_trainer(TrainConfig(method="reward", steps=steps, batch_size=batch, seed=cfg.seed,
                                        lora_r=cfg.lora_r, lora_alpha=cfg.lora_alpha, qlora=cfg.qlora),
                            base_model, out, pairs)
    trainer.train()
    model: Any = trainer.model
    model.save_pretrained(out)
    judge = RewardModel(base_model, out)
    scored = [(judge.score(e["prompt"], e["completion"][0]["content"]), bool(e["label"]))
              for e in heldout if is_chat(e)]
    measured = auc(scored)
    liked = sum(label for _, label in scored)
    passed, p_value = judge_passes(measured, liked, len(scored) - liked)  # NaN (one label only) fails
    # None, not NaN: the figures go into JSON columns, and PostgreSQL's json refuses NaN
    metrics: dict[str, float | None] = {"judge_pairs": float(len(pairs)), "judge_same_prompt_pairs": float(explicit),
                                        "judge_steps": float(steps), "judge_heldout": float(len(scored)),
                                        "judge_auc": None if math.isnan(measured) else measured,
                                        "judge_p_value": p_value}
    return (out if passed else None), metrics


def sft_steps(cfg: TrainConfig, examples: int) -> int:
    """Steps of the SFT stage for `examples` picked answers (SFT_EPOCHS passes, bounded)."""
    return max(cfg.steps, min(SFT_MAX_STEPS, math.ceil(SFT_EPOCHS * examples / cfg.batch_size)))


def best_answers(cfg: TrainConfig, base_model: str, champion: Path | None, judge_dir: Path,
                 prompts: list[Any]) -> tuple[list[dict], dict[str, float]]:
    """The champion's best of `cfg.generations` sampled answers to each prompt, by the
    judge, as SFT conversations; and the mean judge score of the kept vs all samples."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.reward_model import RewardModel

    tokenizer = AutoTokenizer.from_pretrained(base_model)
    policy: Any = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32)
    if champion is not None:
        policy = PeftModel.from_pretrained(policy, champion)
    policy.eval()
    stop = policy.generation_config.eos_token_id  # one id, or several (Llama 3 has two)
    ends = [i for i in (stop if isinstance(stop, list) else [stop, tokenizer.eos_token_id]) if i is not None]
    if not ends:
        raise ValueError(f"{base_model}: no end-of-sequence token, so no sampled answer could be told finished")
    judge = RewardModel(base_model, judge_dir)
    torch.manual_seed(cfg.seed)
    tokenizer.padding_side = "left"  # a batch of prompts, each answer starting right after its own prompt
    if tokenizer.pad_token is None:  # Llama 3, Mistral: the padding sits in the prompt part, cut off below
        tokenizer.pad_token = tokenizer.eos_token
    n = cfg.generations
    kept, all_scores, best_scores, drawn = [], [], [], 0
    for start in range(0, len(prompts), SAMPLE_BATCH):
        chunk = prompts[start:start + SAMPLE_BATCH]
        ids: Any = tokenizer.apply_chat_template(chunk, add_generation_prompt=True, padding=True,
                                                 return_tensors="pt", return_dict=True)
        with torch.no_grad():
            out = policy.generate(**ids, do_sample=True, temperature=1.0, max_new_tokens=cfg.sample_max_new_tokens,
                                  num_return_sequences=n, pad_token_id=tokenizer.pad_token_id, eos_token_id=ends)
        generated = out[:, ids["input_ids"].shape[1]:]  # prompt i's answers are rows i*n .. i*n+n-1
        # An answer cut off at the token limit is unfinished: trained on (with an end of turn
        # appended) it would teach the adapter to stop mid-sentence. Only finished ones compete.
        finished = torch.isin(generated, torch.tensor(ends)).any(dim=1).tolist()
        drawn += len(finished)
        decoded = tokenizer.batch_decode(generated, skip_special_tokens=True)
        for i, prompt in enumerate(chunk):
            answers = [a for a, done in zip(decoded[i * n:i * n + n], finished[i * n:i * n + n], strict=True)
                       if done]
            if not answers:
                continue
            scores = [judge.score(prompt, a) for a in answers]
            best = max(range(len(answers)), key=scores.__getitem__)
            all_scores += scores
            best_scores.append(scores[best])
            kept.append({"messages": [*prompt, {"role": "assistant", "content": answers[best].strip()}]})
    return kept, {"sampled": float(drawn), "finished": float(len(all_scores)), "prompts_kept": float(len(kept)),
                  "mean_score_all": sum(all_scores) / max(len(all_scores), 1),
                  "mean_score_kept": sum(best_scores) / max(len(best_scores), 1)}


def distinct_prompts(labelled: list[dict], limit: int, seed: int = 0) -> list[Any]:
    """Up to `limit` distinct chat prompts of the examples, a seeded sample when there are more."""
    import json

    seen: dict[str, Any] = {}
    for e in labelled:
        if is_chat(e):
            seen.setdefault(json.dumps(e["prompt"], sort_keys=True), e["prompt"])
    prompts = list(seen.values())
    random.Random(seed).shuffle(prompts)
    return prompts[:limit]


def merge_prompts(first: list[Any], more: list[Any], limit: int) -> list[Any]:
    """`first`, then those of `more` not among them, up to `limit` prompts in all."""
    import json

    seen = {json.dumps(q, sort_keys=True) for q in first}
    merged = list(first)
    for q in more:
        if len(merged) >= limit:
            break
        key = json.dumps(q, sort_keys=True)
        if key not in seen:
            seen.add(key)
            merged.append(q)
    return merged
