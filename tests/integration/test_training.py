"""Preference training (TRL + PEFT) on the demo model, on CPU."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from sqlalchemy import select

from adapters import registry
from adapters.db import make_engine, make_sessionmaker
from adapters.schema import AdapterState, AdapterVersion
from tests.integration.conftest import CACHE
from trainer import train as train_module
from trainer.demo_model.corpus import NAMES, TASKS, Style, make_answer, make_prompt
from trainer.train import TrainConfig, main, train

pytestmark = pytest.mark.integration


def preference_examples(n: int, seed: int = 0) -> list[dict]:
    """Formal answers chosen over casual ones, otherwise alike."""
    rng, out = random.Random(seed), []
    for _ in range(n):
        task, name, style = rng.randrange(len(TASKS)), rng.choice(NAMES), Style.random(rng)
        prompt = [{"role": "user", "content": make_prompt(task, name, rng)}]
        formal = make_answer(task, name, Style(True, style.long, style.name, style.question), rng)
        casual = make_answer(task, name, Style(False, style.long, style.name, style.question), rng)
        out.append({"prompt": prompt, "chosen": [{"role": "assistant", "content": formal}],
                    "rejected": [{"role": "assistant", "content": casual}]})
    return out


def kto_examples(pairs: list[dict]) -> list[dict]:
    return [{"prompt": p["prompt"], "completion": p[side], "label": side == "chosen"}
            for p in pairs for side in ("chosen", "rejected")]


def logits(model, tokenizer) -> torch.Tensor:  # type: ignore[no-untyped-def]
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "Hi, I'm Ada. Can you help me bake a cake?"}],
                                        add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        return model(**ids).logits


@pytest.mark.parametrize("method", ["dpo", "kto"])
def test_training_moves_the_adapter_not_the_base_and_reloads_exactly(demo_model: Path, tmp_path: Path,
                                                                     method: str) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    pairs = preference_examples(48)
    examples = pairs if method == "dpo" else kto_examples(pairs)
    cfg = TrainConfig(method=method, steps=12, batch_size=8, learning_rate=5e-4)
    _, history, trained = train(cfg, examples, str(demo_model), tmp_path)

    weights = load_file(tmp_path / "adapter_model.safetensors")
    lora_b = [t for name, t in weights.items() if "lora_B" in name]
    assert lora_b and all(torch.isfinite(t).all() for t in weights.values())
    assert any(t.abs().sum() > 0 for t in lora_b)  # PEFT starts B at zero: training moved it
    assert {name.split(".")[-3] for name in weights if "lora_A" in name} == set(train_module.TARGET_MODULES)

    tokenizer = AutoTokenizer.from_pretrained(demo_model)
    base = AutoModelForCausalLM.from_pretrained(demo_model, dtype=torch.float32)
    base_logits = logits(base, tokenizer)
    trained.eval()
    with trained.disable_adapter():  # the base inside the trained model is untouched
        assert torch.equal(logits(trained, tokenizer), base_logits)
    trained_logits = logits(trained, tokenizer)
    assert not torch.allclose(trained_logits, base_logits)
    reloaded = PeftModel.from_pretrained(base, tmp_path).eval()
    assert torch.equal(logits(reloaded, tokenizer), trained_logits)  # bit-exact after save/load

    losses = [h["loss"] for h in history if "loss" in h]
    assert losses[-1] < losses[0]


def test_runs_register_approved_or_rejected_and_a_crash_leaves_nothing(demo_model: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(json.dumps(p) for p in preference_examples(32)))
    monkeypatch.setenv("LORALOOP_DATA_DIR", str(tmp_path / "data"))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "models").symlink_to(CACHE / "models")

    real_train = train_module.train

    def dies_midway(*args, **kwargs):  # type: ignore[no-untyped-def]
        real_train(*args, **kwargs)  # the adapter is fully written to the scratch folder...
        raise KeyboardInterrupt  # ...and then the run is killed before publishing

    monkeypatch.setattr(train_module, "train", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        main(TrainConfig(data=str(data), steps=4, batch_size=8))
    assert not (tmp_path / "data" / "adapters").exists() or not any((tmp_path / "data" / "adapters").iterdir())
    assert not any((tmp_path / "data" / "runs").iterdir())
    monkeypatch.setattr(train_module, "train", real_train)

    result = main(TrainConfig(data=str(data), steps=4, batch_size=8))
    assert result.version is not None and result.version.startswith("dpo-")
    assert (result.adapter_dir / "adapter_model.safetensors").exists()
    assert result.adapter_dir.parent == tmp_path / "data" / "adapters"
    overtrained = main(TrainConfig(data=str(data), steps=30, batch_size=8, learning_rate=5e-3, check_every=0,
                                   prefix="hot"))
    assert not overtrained.approved and any("implausible" in r for r in overtrained.reasons)

    engine = make_engine(f"sqlite:///{tmp_path / 'data' / 'loraloop.db'}")
    with make_sessionmaker(engine)() as session:
        versions = {v.name: v for v in session.scalars(select(AdapterVersion))}
        servable = registry.snapshot(session).versions
    engine.dispose()
    sound, hot = versions[result.version], versions[overtrained.version]
    assert (sound.state, hot.state) == (AdapterState.approved, AdapterState.rejected)
    assert sound.eval_report["passed"] and not hot.eval_report["passed"]
    assert sound.provenance["config"]["steps"] == 4 and sound.provenance["data_sha256"]
    assert set(servable) == {sound.name}  # the rejected version can never reach users
    for name in (sound.name, hot.name):  # a report for people: curves and verdict as PNG, and JSON
        assert (tmp_path / "data" / "reports" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert json.loads((tmp_path / "data" / "reports" / f"{name}.json").read_text())["gate"]["passed"] == \
            (name == sound.name)
    assert not any((tmp_path / "data" / "runs").iterdir())


def test_best_of_n_keeps_only_finished_answers_the_champion_sampled(demo_model: Path, tmp_path: Path) -> None:
    """The judge (a reward model on the thumbs) picks one of the champion's samples per prompt;
    an answer cut off at the token limit never competes: trained on, it would teach the
    adapter to stop mid-sentence."""
    from dataclasses import replace

    from demo.personas import readable
    from trainer.best_of_n import best_answers, train_judge

    thumbs = kto_examples(preference_examples(24))
    cfg = TrainConfig(method="best-of-n", reward_model_steps=4, generations=3, batch_size=8)
    judge, metrics = train_judge(cfg, str(demo_model), thumbs[:40], thumbs[40:], tmp_path / "judge")
    assert metrics["judge_pairs"] == 40 and metrics["judge_heldout"] == 8
    judge_dir = judge or tmp_path / "judge"  # a 4-step judge may fail its AUC gate; its folder is written
    prompts = [e["prompt"] for e in thumbs[:6:2]]
    kept, stats = best_answers(cfg, str(demo_model), None, judge_dir, prompts)
    assert len(kept) == stats["prompts_kept"] == 3 and stats["finished"] <= stats["sampled"] == 9
    assert [example["messages"][:-1] for example in kept] == prompts
    # finished answers of the demo model read as answers to the request (a cut-off one does not)
    replies = [(p[0]["content"], e["messages"][-1]["content"]) for e, p in zip(kept, prompts, strict=True)]
    assert sum(readable(prompt, reply) is not None for prompt, reply in replies) >= 2
    cut_off, stats = best_answers(replace(cfg, sample_max_new_tokens=3), str(demo_model), None, judge_dir, prompts)
    assert cut_off == [] and stats["prompts_kept"] == stats["finished"] == 0 and stats["sampled"] == 9


def test_from_champion_goes_on_training_the_champions_adapter(demo_model: Path, tmp_path: Path) -> None:
    """Best-of-n's --from-champion: the next generation starts from the champion's LoRA
    weights (its own rank), so what the champion learned is kept, and the champion's folder
    is never written to."""
    conversations = [{"messages": [*p["prompt"], *p["chosen"]]} for p in preference_examples(16)]
    champion_cfg = TrainConfig(method="sft", steps=3, batch_size=4, lora_r=8, eval_every=0)
    train(champion_cfg, conversations, str(demo_model), tmp_path / "champion")
    before = load_file(tmp_path / "champion" / "adapter_model.safetensors")
    one_step = TrainConfig(method="sft", steps=1, batch_size=4, learning_rate=1e-12, eval_every=0)  # lora_r 16
    train(one_step, conversations, str(demo_model), tmp_path / "next", init_adapter=tmp_path / "champion")
    after = load_file(tmp_path / "next" / "adapter_model.safetensors")
    assert after.keys() == before.keys() and all(after[k].shape == before[k].shape for k in before)  # rank 8
    assert all(torch.allclose(after[k], before[k], atol=1e-6) for k in before)  # a tiny step from the champion
    fresh = load_file(tmp_path / "champion" / "adapter_model.safetensors")
    assert all(torch.equal(fresh[k], before[k]) for k in before)  # the champion itself untouched
    with pytest.raises(ValueError, match="only SFT and best-of-n"):
        train(TrainConfig(method="dpo", steps=1), preference_examples(8), str(demo_model), tmp_path / "dpo",
              init_adapter=tmp_path / "champion")
