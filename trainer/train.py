"""Preference training of a LoRA adapter with TRL + PEFT: DPO (pairs) or KTO (unpaired thumbs).

    python -m trainer.train --method dpo [--data pairs.jsonl] [--steps 100] ...

The data is the feedback store's training split (`trainer.data`), or a JSONL file in TRL's
`prompt/chosen/rejected` (DPO) or `prompt/completion/label` (KTO) format. The reference
model is the base with the adapter disabled (no second copy in memory). Settings follow the
hardware: fp32, no gradient checkpointing and precomputed reference log-probs on CPU; bf16
on CUDA. The adapter is written to a scratch folder with its provenance, then published
atomically into the adapter store under its content hash and registered as a `candidate`:
a run that dies midway leaves nothing in the store or the registry.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class TrainConfig:
    method: str = field(default="dpo", metadata={"help": "dpo (pairs) or kto (unpaired thumbs)."})
    base_model: str = field(default="", metadata={"help": "HF id or path; empty: the demo model."})
    data: str = field(default="", metadata={"help": "JSONL in TRL format; empty: the feedback store."})
    steps: int = field(default=100, metadata={"help": "Optimizer steps."})
    batch_size: int = field(default=8, metadata={"help": "Examples per step."})
    learning_rate: float = field(default=2e-4, metadata={"help": "AdamW learning rate."})
    beta: float = field(default=0.1, metadata={"help": "DPO/KTO beta: how far from the reference."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank (the engine's max rank bounds it)."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha."})
    max_length: int = field(default=256, metadata={"help": "Longest prompt + answer in tokens."})
    seed: int = field(default=0, metadata={"help": "Seed for init and data order."})
    prefix: str = field(default="", metadata={"help": "Version name prefix; default: the method."})
    register: bool = field(default=True, metadata={"help": "Publish to the store and register."})
    check_every: int = field(default=20, metadata={
        "help": "Steps between collapse checks; the last healthy checkpoint is what is kept (0: off)."})
    heldout_fraction: float = field(default=0.1, metadata={
        "help": "Share of prompts (of a --data file) held out for the gate."})
    reward_model_steps: int = field(default=60, metadata={
        "help": "Steps of the gate's reward model (DPO runs; 0: no win-rate check)."})
    alias: str = field(default="default", metadata={"help": "Whose champion the candidate is compared with."})

    def __post_init__(self) -> None:
        if self.method not in ("dpo", "kto"):
            raise ValueError(f"method must be dpo or kto, not {self.method!r}")
        if self.steps < 1 or self.batch_size < 1 or self.lora_r < 1:
            raise ValueError("steps, batch_size and lora_r must be positive")
        if self.method == "kto" and self.batch_size < 2:
            raise ValueError("KTO needs batch_size >= 2 (it estimates its KL term across the batch)")


@dataclass
class TrainResult:
    adapter_dir: Path  # the trained adapter (the store's copy when registered)
    version: str | None  # registered version name
    examples: int
    seconds: float
    log_history: list[dict]
    approved: bool
    reasons: list[str]


def load_examples(cfg: TrainConfig, db_url: str) -> dict[str, list[dict]]:
    """{"train": [...], "heldout": [...]}, split by prompt: no held-out prompt is trained on."""
    from trainer.data import DataConfig, build, is_heldout, prompt_key

    if cfg.data:
        examples = [json.loads(line) for line in Path(cfg.data).read_text().splitlines() if line.strip()]
        split: dict[str, list[dict]] = {"train": [], "heldout": []}
        for e in examples:
            split["heldout" if is_heldout(prompt_key(e["prompt"]), cfg.heldout_fraction) else "train"].append(e)
        return split
    from adapters.db import make_engine, make_sessionmaker

    engine = make_engine(db_url)
    with make_sessionmaker(engine)() as session:
        built = build(session, cfg.method, DataConfig(heldout_fraction=cfg.heldout_fraction))
    engine.dispose()
    return built


def healthy_checkpoint_callback(tokenizer, prompts: list, every: int):  # type: ignore[no-untyped-def]
    """A TrainerCallback that runs the gate's collapse check every `every` steps and, at the
    end, puts back the LoRA weights of the last checkpoint that passed it (shared/FACTS.md:
    DPO's teacher-forced metrics keep improving after its samples have turned to garbage)."""
    from transformers import TrainerCallback

    from trainer.gate import GateConfig, sample_metrics

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
            healthy = metrics["sampled_kl"] <= gate.max_sampled_kl and \
                metrics["implausible_share"] < gate.max_implausible_share
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
          check_prompts: list | None = None):
    """Trains and saves the adapter (PEFT format, plus `loraloop-train.json`) into `out`.
    With `check_prompts` (held-out prompts) and cfg.check_every, keeps the last checkpoint
    that passed the collapse check. Returns (seconds, TRL's log history, the PEFT model)."""
    import datasets
    import peft
    import torch
    import transformers
    import trl
    from transformers import AutoModelForCausalLM, AutoTokenizer

    transformers.set_seed(cfg.seed)
    cuda = torch.cuda.is_available()
    tokenizer = AutoTokenizer.from_pretrained(base_model)
    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.bfloat16 if cuda else torch.float32)
    lora = peft.LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0,
                           target_modules=TARGET_MODULES, task_type="CAUSAL_LM")
    common: dict[str, Any] = dict(
        output_dir=str(out / "checkpoints"), max_steps=cfg.steps, per_device_train_batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate, beta=cfg.beta, max_length=cfg.max_length, seed=cfg.seed,
        bf16=cuda, gradient_checkpointing=False, precompute_ref_log_probs=True, report_to="none",
        logging_steps=max(1, cfg.steps // 20), save_strategy="no", remove_unused_columns=False,
        use_cpu=not cuda, disable_tqdm=False,
    )
    dataset = datasets.Dataset.from_list([{k: v for k, v in e.items() if k != "source"} for e in examples])
    trainer: trl.DPOTrainer | trl.KTOTrainer
    if cfg.method == "dpo":
        trainer = trl.DPOTrainer(model=model, args=trl.DPOConfig(**common), train_dataset=dataset,
                                 processing_class=tokenizer, peft_config=lora)
    else:
        trainer = trl.KTOTrainer(model=model, args=trl.KTOConfig(**common), train_dataset=dataset,
                                 processing_class=tokenizer, peft_config=lora)
    guard = None
    if check_prompts and cfg.check_every:
        guard = healthy_checkpoint_callback(tokenizer, check_prompts, cfg.check_every)
        trainer.add_callback(guard)
    started = time.monotonic()
    trainer.train()
    seconds = time.monotonic() - started
    trained: Any = trainer.model  # a PeftModel
    trained.save_pretrained(out)
    provenance = {
        "config": asdict(cfg), "base_model": base_model, "examples": len(examples),
        "data_sha256": _sha256_lines(examples), "seconds": round(seconds, 1),
        "versions": {m.__name__: m.__version__ for m in (torch, transformers, trl, peft, datasets)}
        | {"python": platform.python_version()},
        "log_history": trainer.state.log_history,
        "collapse_checks": guard.checks if guard is not None else [],
    }
    (out / "loraloop-train.json").write_text(json.dumps(provenance, indent=2, default=str))
    return seconds, trainer.state.log_history, trained


def _sha256_lines(examples: list[dict]) -> str:
    import hashlib

    digest = hashlib.sha256()
    for e in examples:
        digest.update(json.dumps(e, sort_keys=True).encode())
    return digest.hexdigest()


def current_champion(db_url: str, alias: str) -> Path | None:
    from adapters import registry
    from adapters.db import make_engine, make_sessionmaker, upgrade

    engine = make_engine(db_url)
    upgrade(engine)
    with make_sessionmaker(engine)() as session:
        table = registry.snapshot(session)
    engine.dispose()
    champion = table.aliases.get(alias)
    return Path(table.versions[champion]) if champion in table.versions else None


def main(cfg: TrainConfig) -> TrainResult:
    """Data -> training -> gate -> a registered version, `approved` or `rejected` with its report."""
    from adapters import registry
    from adapters.db import make_engine, make_sessionmaker, upgrade
    from adapters.schema import AdapterState
    from adapters.settings import StoreSettings
    from trainer.demo_model import ensure_demo_model
    from trainer.gate import evaluate

    settings = StoreSettings()
    base_model = cfg.base_model or str(ensure_demo_model(settings.data_dir))
    data = load_examples(cfg, settings.db_url)
    if not data["train"]:
        raise SystemExit(f"no {cfg.method} training data: collect feedback first (loraloop data report)")
    # Held-out prompts for the collapse checks; with too little data to hold any out, the
    # training prompts (sample-based checks need no labels, so they still mean something).
    prompts = [e["prompt"] for e in (data["heldout"] or data["train"])][:16]
    pairs = data["heldout"] if cfg.method == "dpo" else []
    scratch_root = settings.data_dir / "runs"
    scratch_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch_root, prefix=f"{cfg.method}-") as scratch:
        seconds, history, _ = train(cfg, data["train"], base_model, Path(scratch), prompts)
        reward = None
        if cfg.method == "dpo" and cfg.reward_model_steps and len(data["train"]) >= 8:
            from trainer.reward_model import train_reward_model

            reward = train_reward_model(base_model, data["train"], Path(scratch) / "reward-model",
                                        cfg.reward_model_steps, cfg.seed)
        report = evaluate(base_model, Path(scratch), pairs, prompts, reward_model=reward,
                          champion=current_champion(settings.db_url, cfg.alias))
        provenance = json.loads((Path(scratch) / "loraloop-train.json").read_text())
        (Path(scratch) / "loraloop-eval.json").write_text(report.to_json())
        if not cfg.register:
            kept = scratch_root / Path(scratch).name.replace("-", "-done-", 1)
            Path(scratch).rename(kept)
            Path(scratch).mkdir()
            return TrainResult(kept, None, len(data["train"]), seconds, history, report.passed, report.reasons)
        engine = make_engine(settings.db_url)
        upgrade(engine)
        with make_sessionmaker(engine).begin() as session:
            version = registry.register(session, Path(scratch), settings.adapter_store, base_model,
                                        prefix=cfg.prefix or cfg.method)
            version.provenance = {k: v for k, v in provenance.items() if k != "log_history"}
            version.eval_report = json.loads(report.to_json())
            registry.transition(session, version.name,
                                AdapterState.approved if report.passed else AdapterState.rejected)
            name, path = version.name, Path(version.path)
        engine.dispose()
        from trainer.report import write_report

        write_report(settings.data_dir / "reports", name, provenance, history, json.loads(report.to_json()))
    log.info("%s %s (%d examples, %.0f s): %s", name, "approved" if report.passed else "rejected",
             len(data["train"]), seconds, "; ".join(report.reasons) or "all checks passed")
    return TrainResult(path, name, len(data["train"]), seconds, history, report.passed, report.reasons)


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    parser = argparse.ArgumentParser(prog="loraloop train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in fields(TrainConfig):
        if f.type in ("bool", bool):
            parser.add_argument(f"--no-{f.name.replace('_', '-')}", dest=f.name, action="store_false",
                                help=f"do not: {f.metadata['help']}")
        else:
            kind = {"int": int, "float": float}.get(str(f.type), str)
            parser.add_argument(f"--{f.name.replace('_', '-')}", type=kind, default=f.default,
                                help=f.metadata["help"])
    return TrainConfig(**vars(parser.parse_args(argv)))


def run_recorded(cfg: TrainConfig) -> TrainResult:
    """`main` as one recorded run: waits for no one (a run already going is an error) and
    leaves a `training_runs` row, like a scheduled run."""
    from datetime import timedelta

    from adapters.db import make_engine, make_sessionmaker, upgrade
    from adapters.settings import StoreSettings
    from trainer.runs import run_exclusive

    settings = StoreSettings()
    engine = make_engine(settings.db_url)
    upgrade(engine)
    try:
        done = run_exclusive(make_sessionmaker(engine), cfg.method, timedelta(hours=3),
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
    cfg = parse_args()
    result = run_recorded(cfg) if cfg.register else main(cfg)
    print(json.dumps({"version": result.version, "approved": result.approved, "reasons": result.reasons,
                      "path": str(result.adapter_dir), "examples": result.examples,
                      "seconds": round(result.seconds, 1)}))
