"""Training a LoRA adapter with TRL + PEFT, by any method of the post-training playbook:

    python -m trainer.train --method auto|dpo|kto|best-of-n|sft|reward|grpo [--data FILE] [--steps 100] ...

- auto (the scheduled default): one of the next three, chosen from what the data holds
  (trainer/method_choice.py) and recorded in the provenance as `method_choice`.
- dpo: preference pairs (`prompt/chosen/rejected`); kto: unpaired thumbs (`prompt/completion/label`),
  weighted to balance liked and disliked. Both come straight from the feedback store.
- best-of-n: a reward model trained and gated on the thumbs picks the best of the champion's
  sampled answers, and SFT learns those (trainer/best_of_n.py); few, noisy, one-sided thumbs.
- sft: conversations (`messages`), loss on assistant turns only, early stopping on held-out
  validation loss (trainer/sft.py). From a file, or the liked conversations in the store.
- reward: a reward model (sequence classification, LoRA + score head) from pairs, judged by
  its held-out accuracy; the gate's judge and GRPO's reward. Never served to users.
- grpo: RLHF against the newest approved reward model with a KL penalty to the reference
  (trainer/rlhf.py; TRL 1.16's PPO-family trainer: it has no PPOTrainer any more).
- --qlora: the base in 4-bit NF4 on a CUDA GPU (trainer/models.py); refused on CPU.

The data is the feedback store's training split (`trainer.data`) or a JSONL file; the
held-out split is by prompt, never trained on. The reference model is the base with the
adapter disabled (no second copy in memory). The adapter is written to a scratch folder
with its provenance, judged by the gate, then published atomically into the adapter store
under its content hash and registered `approved` or `rejected`: a run that dies midway
leaves nothing in the store or the registry.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import platform
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from trainer import best_of_n
from trainer.gate_config import GateConfig
from trainer.method_choice import choose, with_kto_weights
from trainer.models import TARGET_MODULES, check_qlora
from trainer.train_config import AUTO, DEFAULT_LEARNING_RATE, METHODS, TrainConfig

log = logging.getLogger(__name__)
MAX_GUARD_CHECKS = 6  # collapse checks during one run (besides the one at its end)

__all__ = ["DEFAULT_LEARNING_RATE", "METHODS", "TARGET_MODULES", "TrainConfig", "TrainResult", "main", "train"]


@dataclass
class TrainResult:
    adapter_dir: Path  # the trained adapter (the store's copy when registered)
    version: str | None  # registered version name
    examples: int
    seconds: float
    log_history: list[dict]
    approved: bool
    reasons: list[str]


def example_prompt(example: dict) -> Any:
    """The prompt of an example in any of the formats: `prompt`, or a conversation's turns
    before its last answer."""
    return example["prompt"] if "prompt" in example else example["messages"][:-1]


@contextlib.contextmanager
def alias_data(cfg: TrainConfig, db_url: str) -> Iterator[tuple[Any, Any]]:
    """(a session, the DataConfig of the feedback that may train `cfg.alias`), the engine
    disposed afterwards: what every read of the store's training data starts from."""
    from adapters.db import make_engine, make_sessionmaker
    from trainer.data import DataConfig, for_alias

    engine = make_engine(db_url)
    try:
        with make_sessionmaker(engine)() as session:
            yield session, for_alias(session, cfg.alias, DataConfig(heldout_fraction=cfg.heldout_fraction,
                                                                     cross_tenant=cfg.cross_tenant))
    finally:
        engine.dispose()


def load_examples(cfg: TrainConfig, db_url: str) -> dict[str, list[dict]]:
    """{"train": [...], "heldout": [...]}, split by prompt: no held-out prompt is trained on.
    GRPO learns from prompts alone: one example per distinct prompt."""
    from trainer.data import build, is_heldout, prompt_key

    if cfg.data:
        examples = [json.loads(line) for line in Path(cfg.data).read_text().splitlines() if line.strip()]
        split: dict[str, list[dict]] = {"train": [], "heldout": []}
        for e in examples:
            key = prompt_key(example_prompt(e))
            split["heldout" if is_heldout(key, cfg.heldout_fraction) else "train"].append(e)
    else:
        with alias_data(cfg, db_url) as (session, data_cfg):
            split = build(session, METHODS[cfg.method], data_cfg)
    if cfg.method == "grpo":
        for name, examples in split.items():
            distinct = {prompt_key(example_prompt(e)): example_prompt(e) for e in examples}
            split[name] = [{"prompt": p} for p in distinct.values()]
    return split


def healthy_checkpoint_callback(tokenizer, prompts: list, every: int):  # type: ignore[no-untyped-def]
    """A TrainerCallback that runs the gate's collapse check every `every` steps and, at the
    end, puts back the LoRA weights of the last checkpoint that passed it (measured on
    the demo model: DPO's teacher-forced metrics keep improving after its samples have turned to garbage)."""
    from transformers import TrainerCallback

    from trainer.gate import collapse_reasons, sample_metrics

    gate = GateConfig()  # the gate's own settings and prompts: the same verdict as the gate's

    class HealthyCheckpoint(TrainerCallback):
        def __init__(self) -> None:
            self.checks: list[dict] = []
            self.kept: dict | None = None
            self.last_healthy = True

        def _check(self, model, step: int) -> None:  # type: ignore[no-untyped-def]
            model.eval()
            metrics = sample_metrics(model, tokenizer, prompts, gate)
            model.train()
            healthy = not collapse_reasons(metrics, gate)
            self.checks.append({"step": step, "healthy": healthy, **metrics})
            self.last_healthy = healthy
            if healthy:
                self.kept = {k: v.detach().clone() for k, v in model.state_dict().items() if "lora_" in k}

        def on_step_end(self, args, state, control, model=None, **kwargs):  # type: ignore[no-untyped-def]
            if state.global_step % every == 0 and state.global_step < state.max_steps:
                self._check(model, state.global_step)

        def on_train_end(self, args, state, control, model=None, **kwargs):  # type: ignore[no-untyped-def]
            self._check(model, state.global_step)
            if not self.last_healthy and self.kept is not None:
                model.load_state_dict(self.kept, strict=False)
                self.checks.append({"step": state.global_step, "restored_step": self._kept_step()})

        def _kept_step(self) -> int:
            return max(c["step"] for c in self.checks if c.get("healthy"))

    return HealthyCheckpoint()


def train(cfg: TrainConfig, examples: list[dict], base_model: str, out: Path,  # type: ignore[no-untyped-def]
          check_prompts: list | None = None, heldout: list[dict] | None = None,
          reward_adapter: Path | None = None, init_adapter: Path | None = None):
    """Trains and saves the adapter (PEFT format, plus `loraloop-train.json`) into `out`.
    With `check_prompts` (held-out prompts) and cfg.check_every, a policy keeps its last
    checkpoint that passed the collapse check. `heldout` is SFT's validation set;
    `reward_adapter` GRPO's reward model; `init_adapter` an adapter SFT goes on training
    (best-of-n's --from-champion). Returns (seconds, TRL's log history, the PEFT model)."""
    import datasets
    import peft
    import torch
    import transformers
    import trl
    from transformers import AutoTokenizer

    transformers.set_seed(cfg.seed)
    if init_adapter is not None:  # it keeps its own rank and alpha: the provenance says so
        adapter = json.loads((init_adapter / "adapter_config.json").read_text())
        cfg = replace(cfg, lora_r=adapter["r"], lora_alpha=adapter["lora_alpha"])
    trainer = _build_trainer(cfg, examples, base_model, out, heldout or [], reward_adapter, init_adapter)
    guard = None
    if cfg.kind == "policy" and check_prompts and cfg.check_every:
        # at most MAX_GUARD_CHECKS checks a run: each samples 64 answers (~20 s beside vLLM on 2
        # cores), so a 400-step best-of-n run checked every 20 steps spent 7 of its 9.5 minutes on them
        every = max(cfg.check_every, -(-cfg.steps // MAX_GUARD_CHECKS))
        guard = healthy_checkpoint_callback(AutoTokenizer.from_pretrained(base_model), check_prompts, every)
        trainer.add_callback(guard)
    started = time.monotonic()
    trainer.train()
    seconds = time.monotonic() - started
    trained: Any = trainer.model  # a PeftModel
    trained.save_pretrained(out)
    provenance = {
        "config": asdict(cfg), "kind": cfg.kind, "base_model": base_model, "examples": len(examples),
        "data_sha256": _sha256_lines(examples), "seconds": round(seconds, 1),
        "versions": {m.__name__: m.__version__ for m in (torch, transformers, trl, peft, datasets)}
        | {"python": platform.python_version()},
        "log_history": trainer.state.log_history,
        "collapse_checks": guard.checks if guard is not None else [],
    }
    if reward_adapter is not None:
        provenance["reward_model"] = str(reward_adapter)
    if init_adapter is not None:
        provenance["init_adapter"] = str(init_adapter)
    (out / "loraloop-train.json").write_text(json.dumps(provenance, indent=2, default=str))
    return seconds, trainer.state.log_history, trained


def _build_trainer(cfg: TrainConfig, examples: list[dict], base_model: str, out: Path,  # type: ignore[no-untyped-def]
                   heldout: list[dict], reward_adapter: Path | None, init_adapter: Path | None = None):
    if cfg.method in ("sft", "best-of-n"):  # best-of-n: SFT on the answers its judge picked
        from trainer import sft

        return sft.build_trainer(cfg, base_model, out, examples, heldout, init_adapter)
    if init_adapter is not None:
        raise ValueError(f"{cfg.method} trains a fresh adapter; only SFT and best-of-n go on training one")
    if cfg.method == "reward":
        from trainer import reward_model

        return reward_model.build_trainer(cfg, base_model, out, examples)
    if cfg.method == "grpo":
        from trainer import rlhf

        if reward_adapter is None:
            raise ValueError("GRPO needs a reward model (train one with --method reward)")
        return rlhf.build_trainer(cfg, base_model, out, examples, reward_adapter)
    import datasets
    import trl
    from transformers import AutoTokenizer

    from trainer.models import load_causal_lm, lora_config, trainer_args

    args = trainer_args(cfg, out) | dict(beta=cfg.beta, max_length=cfg.max_length, precompute_ref_log_probs=True)
    dataset = datasets.Dataset.from_list([{k: v for k, v in e.items() if k != "source"} for e in examples])
    common: dict[str, Any] = dict(model=load_causal_lm(base_model, cfg.qlora), train_dataset=dataset,
                                  processing_class=AutoTokenizer.from_pretrained(base_model),
                                  peft_config=lora_config(cfg.lora_r, cfg.lora_alpha))
    if cfg.method == "dpo":
        return trl.DPOTrainer(args=trl.DPOConfig(**args), **common)
    cfg = with_kto_weights(cfg, examples)
    return trl.KTOTrainer(args=trl.KTOConfig(**args, desirable_weight=cfg.desirable_weight,
                                             undesirable_weight=cfg.undesirable_weight), **common)


def _sha256_lines(examples: list[dict]) -> str:
    import hashlib

    digest = hashlib.sha256()
    for e in examples:
        digest.update(json.dumps(e, sort_keys=True).encode())
    return digest.hexdigest()


def champion_of(db_url: str, alias: str) -> tuple[str | None, Path | None]:
    """What the alias serves: (version name, adapter folder), a segment's alias without a
    champion of its own its parent's (what its users get, what its canary is tested against);
    (None, None) for the base model."""
    from adapters import registry

    with _session(db_url) as session:
        table = registry.snapshot(session)
    champion = table.champion(alias)
    return (champion, Path(table.versions[champion])) if champion in table.versions else (None, None)


def current_champion(db_url: str, alias: str) -> Path | None:
    return champion_of(db_url, alias)[1]


def reward_model_for(cfg: TrainConfig, db_url: str, base_model: str) -> Path | None:
    """The reward model that judges this run (and is GRPO's reward): --reward-model (a
    version name or a folder), else the newest approved reward version on this base."""
    from adapters import registry
    from adapters.schema import AdapterState, AdapterVersion

    if cfg.reward_model and Path(cfg.reward_model).is_dir():
        return Path(cfg.reward_model)
    with _session(db_url) as session:
        if not cfg.reward_model:
            newest = registry.newest(session, kind="reward", base_model=base_model)
            return Path(newest.path) if newest else None
        version = session.get(AdapterVersion, cfg.reward_model)
        if version is None or version.kind != "reward" or version.state != AdapterState.approved:
            raise SystemExit(f"--reward-model {cfg.reward_model!r} is neither a folder nor an approved reward "
                             "version (loraloop adapters list)")
        return Path(version.path)


@contextmanager
def _session(db_url: str) -> Iterator[Any]:
    """A transaction on an upgraded database, its engine disposed afterwards."""
    from adapters.db import make_engine, make_sessionmaker, upgrade

    engine = make_engine(db_url)
    upgrade(engine)
    try:
        with make_sessionmaker(engine).begin() as session:
            yield session
    finally:
        engine.dispose()


def judge(cfg: TrainConfig, base_model: str, adapter: Path, data: dict[str, list[dict]], prompts: list,
          reward: Path | None, db_url: str, champion: Path | None = None):  # type: ignore[no-untyped-def]
    """The gate's verdict on the scratch adapter (trainer/gate.py)."""
    from trainer.gate import evaluate, evaluate_reward_model

    if cfg.kind == "reward":
        return evaluate_reward_model(base_model, adapter, data["heldout"])
    if reward is None and cfg.method == "dpo" and cfg.reward_model_steps and len(data["train"]) >= 8:
        from trainer.reward_model import train_reward_model

        reward = train_reward_model(base_model, data["train"], adapter / "reward-model",
                                    cfg.reward_model_steps, cfg.seed)
    reference = None
    if cfg.reference_data:
        reference = [json.loads(line)["messages"] for line in Path(cfg.reference_data).read_text().splitlines()
                     if line.strip()]
    return evaluate(base_model, adapter, data["heldout"] if cfg.method == "dpo" else [], prompts,
                    reward_model=reward, champion=champion, reference=reference)


def resolve_method(cfg: TrainConfig, db_url: str) -> tuple[TrainConfig, dict | None]:
    """`cfg` with `--method auto` replaced by the method the data supports
    (trainer/method_choice.py), and the record of that choice (None when not auto)."""
    if cfg.method != AUTO:
        return cfg, None
    counts: dict[str, int] = {}
    if cfg.data:
        examples = [json.loads(line) for line in Path(cfg.data).read_text().splitlines() if line.strip()]
        if not examples:
            raise SystemExit(f"--data {cfg.data} is empty")
        liked = sum(bool(e.get("label")) for e in examples if "label" in e)
        counts = {"pairs": sum("chosen" in e for e in examples), "liked": liked,
                  "disliked": sum("label" in e for e in examples) - liked}
        if "messages" in examples[0]:
            method, why = "sft", "--data holds conversations"
        elif not any(counts.values()):
            raise SystemExit(f"--data {cfg.data}: neither pairs, thumbs (label) nor conversations (messages)")
        else:
            method, why = choose(counts["pairs"], counts["liked"], counts["disliked"], cfg.min_pairs)
    else:
        from adapters.schema import CONVERSATION_KINDS
        from trainer.data import DataConfig, for_alias, report

        with _session(db_url) as session:
            figures = report(session, for_alias(session, cfg.alias, DataConfig(
                heldout_fraction=cfg.heldout_fraction, cross_tenant=cfg.cross_tenant)))
        counts = {"pairs": figures["dpo_pairs"]["train"], "liked": figures["liked"], "disliked": figures["disliked"]}
        # the judge scores conversations: thumbs on chat-shaped answers train it
        chat = [figures["per_kind"].get(kind, {}) for kind in CONVERSATION_KINDS]
        method, why = choose(counts["pairs"], counts["liked"], counts["disliked"], cfg.min_pairs,
                             judged=(sum(k.get("up", 0) for k in chat), sum(k.get("down", 0) for k in chat)))
    log.info("--method auto: %s (%s)", method, why)
    return replace(cfg, method=method), {"requested": AUTO, "chose": method, "why": why, **counts}


def served_prompts(cfg: TrainConfig, db_url: str) -> list[Any]:
    """The alias's recent training-split chat prompts, rated or not (trainer.data.served_prompts)."""
    from trainer.data import served_prompts as recent

    with alias_data(cfg, db_url) as (session, data_cfg):
        return recent(session, data_cfg, cfg.alias, cfg.sample_prompts, per_user=max(1, cfg.sample_prompts // 10),
                      max_tokens=cfg.max_length - cfg.sample_max_new_tokens)  # room for the answer


def same_prompt_pairs(cfg: TrainConfig, db_url: str, data: dict[str, list[dict]]) -> list[dict]:
    """The training split's same-prompt and regeneration pairs for best-of-n's judge: the
    `chosen/rejected` lines of a --data file, or a seeded sample of the store's (bounded
    by what the judge can train on)."""
    if cfg.data:
        return [e for e in data["train"] if "chosen" in e]
    from trainer.data import sample_pairs

    with alias_data(cfg, db_url) as (session, data_cfg):
        return sample_pairs(session, data_cfg, best_of_n.JUDGE_MAX_PAIRS // 2, cfg.seed)


def best_of_n_examples(cfg: TrainConfig, base_model: str, data: dict[str, list[dict]], scratch: Path,
                       db_url: str, champion: Path | None) -> tuple[list[dict], Path | None, dict]:
    """(SFT examples, the gated judge, figures) for best-of-n (trainer/best_of_n.py): the
    `champion`'s best samples (the base's when None); no examples and no judge when the
    judge failed its gate or no sampled answer finished."""
    judge_dir, figures = best_of_n.train_judge(cfg, base_model, data["train"], data["heldout"],
                                               scratch / "reward-model", same_prompt_pairs(cfg, db_url, data))
    if judge_dir is None:
        return [], None, figures
    prompts = best_of_n.distinct_prompts(data["train"], cfg.sample_prompts, cfg.seed)
    if not cfg.data and len(prompts) < cfg.sample_prompts:  # the store also has the prompts nobody rated
        prompts = best_of_n.merge_prompts(prompts, served_prompts(cfg, db_url), cfg.sample_prompts)
    examples, sampled = best_of_n.best_answers(cfg, base_model, champion, judge_dir, prompts)
    return examples, (judge_dir if examples else None), figures | sampled


def main(cfg: TrainConfig) -> TrainResult:
    """Data -> training -> gate -> a registered version, `approved` or `rejected` with its report."""
    from adapters import registry
    from adapters.schema import AdapterState
    from adapters.settings import StoreSettings
    from trainer import runs
    from trainer.demo_model import ensure_demo_model

    if cfg.qlora:
        check_qlora()  # before any data is read or model loaded
    settings = StoreSettings()
    base_model = cfg.base_model or str(ensure_demo_model(settings.data_dir))
    cfg, choice = resolve_method(cfg, settings.db_url)
    data = load_examples(cfg, settings.db_url)
    if not data["train"]:
        raise SystemExit(f"no {cfg.method} training data: collect feedback first (loraloop data report)")
    if cfg.method == "kto":
        cfg = with_kto_weights(cfg, data["train"])  # recorded in the provenance's config
    reward = reward_model_for(cfg, settings.db_url, base_model) if cfg.kind == "policy" else None
    if cfg.method == "grpo" and reward is None:
        raise SystemExit("grpo needs an approved reward model on this base: train one first "
                         "(loraloop train --method reward) or pass --reward-model")
    # Held-out prompts for the collapse checks; with too little data to hold any out, the
    # training prompts (sample-based checks need no labels, so they still mean something).
    prompts = [example_prompt(e) for e in (data["heldout"] or data["train"])][:16]
    scratch_root = settings.data_dir / "runs"
    scratch_root.mkdir(parents=True, exist_ok=True)
    run = runs.current()  # a recorded run: its own scratch folder, and a lease to hold while registering
    folder = contextlib.nullcontext(str(run.scratch)) if run is not None else \
        tempfile.TemporaryDirectory(dir=scratch_root, prefix=f"{cfg.method}-")
    with folder as scratch:
        examples, heldout = data["train"], data["heldout"]
        extra: dict[str, Any] = {}  # what the provenance records besides the run's own figures
        init = None  # the adapter SFT goes on training (best-of-n --from-champion), else a fresh one
        if cfg.method == "best-of-n":
            sampler = current_champion(settings.db_url, cfg.alias)
            examples, judge_dir, extra["best_of_n"] = best_of_n_examples(cfg, base_model, data, Path(scratch),
                                                                          settings.db_url, sampler)
            init = sampler if cfg.from_champion and judge_dir is not None else None
            # The gate's win rate: an approved reward model when there is one (independent of
            # the judge that picked the training answers), else the judge itself.
            heldout, reward = [], reward or judge_dir
            if judge_dir is None and choice is None:
                raise SystemExit(f"best-of-n: the reward model failed its gate, or no sampled answer finished "
                                 f"within --sample-max-new-tokens ({extra['best_of_n']}): more ratings of both "
                                 "kinds are needed, or a larger token limit")
            if judge_dir is not None:
                cfg = replace(cfg, steps=best_of_n.sft_steps(cfg, len(examples)))
                extra["best_of_n"]["sft_steps"] = float(cfg.steps)
            if judge_dir is None and choice is not None:  # auto: too few or too noisy thumbs to judge by
                thumbs = {split: [e for e in data[split] if "label" in e] for split in ("train", "heldout")}
                cfg = with_kto_weights(replace(cfg, method="kto", learning_rate=0.0 if cfg.learning_rate ==
                                               DEFAULT_LEARNING_RATE["best-of-n"] else cfg.learning_rate),
                                       thumbs["train"])  # (a --data file's pair lines are not KTO's)
                examples, heldout = thumbs["train"], thumbs["heldout"]
                choice |= {"chose": "kto", "why": choice["why"] + "; its judge failed its gate (or no sample "
                           "finished), so KTO"}
        seconds, history, _ = train(cfg, examples, base_model, Path(scratch), prompts, heldout,
                                    reward if cfg.method == "grpo" else None, init)
        # what the gate's win rate compares with: the experiment's pre-screen prior holds only
        # against that champion (adapters/experiments.py prior_mean)
        extra["gate_champion"], champion = champion_of(settings.db_url, cfg.alias)
        report = judge(cfg, base_model, Path(scratch), data, prompts, reward, settings.db_url, champion)
        provenance = json.loads((Path(scratch) / "loraloop-train.json").read_text())
        if choice is not None or extra:
            provenance |= extra | ({"method_choice": choice} if choice else {})
            (Path(scratch) / "loraloop-train.json").write_text(json.dumps(provenance, indent=2, default=str))
        (Path(scratch) / "loraloop-eval.json").write_text(report.to_json())
        if not cfg.register:
            method, _, suffix = Path(scratch).name.rpartition("-")  # (tempfile's suffixes have no "-")
            kept = scratch_root / f"{method}-done-{suffix}"
            Path(scratch).rename(kept)
            Path(scratch).mkdir()
            return TrainResult(kept, None, len(data["train"]), seconds, history, report.passed, report.reasons)
        with _session(settings.db_url) as session:
            if run is not None:  # first: this transaction commits only while the run holds the lease
                run.fence(session)
            # trained on one tenant's feedback (trainer/data.py for_alias): only for that tenant
            version = registry.register(session, Path(scratch), settings.adapter_store, base_model,
                                        prefix=cfg.prefix or cfg.method, kind=cfg.kind,
                                        tenant=registry.alias_tenant(session, cfg.alias))
            version.provenance = {k: v for k, v in provenance.items() if k != "log_history"}
            version.eval_report = json.loads(report.to_json())
            registry.transition(session, version.name,
                                AdapterState.approved if report.passed else AdapterState.rejected)
            name, path = version.name, Path(version.path)
        from trainer.report import write_report

        write_report(settings.data_dir / "reports", name, provenance, history, json.loads(report.to_json()))
    log.info("%s %s (%d examples, %.0f s): %s", name, "approved" if report.passed else "rejected",
             len(data["train"]), seconds, "; ".join(report.reasons) or "all checks passed")
    return TrainResult(path, name, len(data["train"]), seconds, history, report.passed, report.reasons)


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    parser = argparse.ArgumentParser(prog="loraloop train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in fields(TrainConfig):
        if f.type in ("bool", bool) and f.default:
            parser.add_argument(f"--no-{f.name.replace('_', '-')}", dest=f.name, action="store_false",
                                help=f"do not: {f.metadata['help']}")
        elif f.type in ("bool", bool):
            parser.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, action="store_true",
                                help=f.metadata["help"])
        else:
            kind = {"int": int, "float": float}.get(str(f.type), str)
            parser.add_argument(f"--{f.name.replace('_', '-')}", type=kind, default=f.default,
                                help=f.metadata["help"])
    return TrainConfig(**vars(parser.parse_args(argv)))


def run_recorded(cfg: TrainConfig) -> TrainResult:
    """`main` as one recorded run: waits for no one (a run already going is an error) and
    leaves a `training_runs` row, like a scheduled run."""
    from adapters.db import make_engine, make_sessionmaker, upgrade
    from adapters.settings import StoreSettings
    from trainer.runs import LEASE_TTL, run_exclusive

    settings = StoreSettings()
    engine = make_engine(settings.db_url)
    upgrade(engine)
    try:
        done = run_exclusive(make_sessionmaker(engine), cfg.method, LEASE_TTL,
                             settings.data_dir / "runs", lambda: main(cfg))
    finally:
        engine.dispose()
    if done.outcome == "busy":
        raise SystemExit("another training run is in progress (it holds the database lease); try later")
    if done.outcome == "failed":
        raise SystemExit("training failed (the log above says why; recorded in training_runs)")
    assert isinstance(done.result, TrainResult)
    return done.result


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        cfg = parse_args()
    except ValueError as exc:  # a setting that cannot work: say why, no traceback
        raise SystemExit(f"loraloop train: {exc}") from None
    if cfg.qlora:
        check_qlora()  # before the run is recorded: nothing was tried
    result = run_recorded(cfg) if cfg.register else main(cfg)
    print(json.dumps({"version": result.version, "approved": result.approved, "reasons": result.reasons,
                      "path": str(result.adapter_dir), "examples": result.examples,
                      "seconds": round(result.seconds, 1)}))
