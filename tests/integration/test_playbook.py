"""The post-training playbook on the demo model, on CPU: SFT, a reward model and RLHF (GRPO)
each end as a version in the store with the gate's verdict; the policies serve from vLLM."""

from __future__ import annotations

import json
import random
import statistics
import time
from pathlib import Path

import openai
import pytest
import torch

from adapters import registry
from adapters.db import make_engine, make_sessionmaker
from adapters.errors import InvalidTransition
from adapters.schema import AdapterState, AdapterVersion
from gateway.settings import DEMO_MODEL_NAME
from tests.integration.conftest import CACHE, LiveGateway
from tests.integration.test_training import logits, preference_examples
from trainer.demo_model.corpus import NAMES, TASKS, Style, make_answer, make_prompt, style_of
from trainer.sft import assistant_masked
from trainer.train import TrainConfig, TrainResult, main, train

pytestmark = pytest.mark.integration

FORMAL = Style(formal=True, long=False, name=True, question=False)


def conversations(n: int, style: Style, seed: int) -> list[dict]:
    """Two-turn conversations whose every answer follows `style`."""
    rng, out = random.Random(seed), []
    for _ in range(n):
        messages: list[dict] = []
        for _turn in range(2):
            task, name = rng.randrange(len(TASKS)), rng.choice(NAMES)
            messages += [{"role": "user", "content": make_prompt(task, name, rng)},
                         {"role": "assistant", "content": make_answer(task, name, style, rng)}]
        out.append({"messages": messages})
    return out


def formal_share(model, tokenizer, prompts: list[list[dict]], seed: int = 0) -> float:  # type: ignore[no-untyped-def]
    """Share of sampled answers that are well formed and formal (what these users like)."""
    torch.manual_seed(seed)
    hits = 0
    for prompt in prompts:
        ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        with torch.no_grad():
            out = model.generate(**ids, do_sample=True, max_new_tokens=48, pad_token_id=tokenizer.pad_token_id)
        answer = tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
        name = prompt[-1]["content"]
        style = style_of(answer, next(n for n in NAMES if n in name))
        hits += bool(style and style.formal)
    return hits / len(prompts)


def heldout_prompts(n: int) -> list[list[dict]]:
    return [p["prompt"] for p in preference_examples(n, seed=99)]


def test_sft_learns_only_the_assistant_turns(demo_model: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(demo_model)
    messages = [{"role": "system", "content": "Style: formal, short, name, no question."},
                *conversations(1, FORMAL, seed=3)[0]["messages"]]
    encoded = assistant_masked(tokenizer, messages)
    whole = tokenizer.apply_chat_template(messages, tokenize=False)
    assert tokenizer.decode(encoded["input_ids"]) == whole  # the same text the model sees when served
    learned = tokenizer.decode([t for t, m in zip(encoded["input_ids"], encoded["assistant_masks"], strict=True)
                                if m])
    assert learned == "".join(m["content"] + "<|end|>" for m in messages if m["role"] == "assistant")


def test_sft_moves_the_adapter_towards_the_conversations_and_tracks_validation_loss(
        demo_model: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = TrainConfig(method="sft", steps=40, eval_every=10, check_every=0)
    _, history, trained = train(cfg, conversations(160, FORMAL, seed=0), str(demo_model), tmp_path,
                                heldout=conversations(16, FORMAL, seed=1))
    evals = [h["eval_loss"] for h in history if "eval_loss" in h]
    assert len(evals) >= 2 and evals[-1] < evals[0]

    tokenizer = AutoTokenizer.from_pretrained(demo_model)
    base = AutoModelForCausalLM.from_pretrained(demo_model, dtype=torch.float32)
    trained.eval()
    with trained.disable_adapter():
        assert torch.equal(logits(trained, tokenizer), logits(base, tokenizer))  # the base is untouched
    # 64 prompts: on 24 the sampled shares moved by +-0.1 with the sampling seed alone
    prompts = heldout_prompts(64)
    assert formal_share(trained, tokenizer, prompts) >= formal_share(base, tokenizer, prompts) + 0.2


def test_sft_stops_early_when_validation_loss_turns(demo_model: Path, tmp_path: Path) -> None:
    """Eight conversations learned by heart: validation loss on others turns up, training
    stops early and the best checkpoint is what is kept."""
    cfg = TrainConfig(method="sft", steps=200, eval_every=5, patience=2, check_every=0, learning_rate=5e-3,
                      batch_size=8)
    _, history, _ = train(cfg, conversations(8, FORMAL, seed=0), str(demo_model), tmp_path,
                          heldout=[*conversations(8, Style(False, True, False, True), seed=1)])
    evals = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h]
    assert max(step for step, _ in evals) < 200
    provenance = json.loads((tmp_path / "loraloop-train.json").read_text())
    assert provenance["log_history"][-1]["step"] < 200


@pytest.fixture(scope="module")
def store(demo_model: Path, tmp_path_factory: pytest.TempPathFactory,
          ) -> Path:
    data = tmp_path_factory.mktemp("playbook")
    (data / "models").symlink_to(CACHE / "models")
    return data


@pytest.fixture(scope="module")
def reward_version(store: Path, demo_model: Path) -> str:
    mp = pytest.MonkeyPatch()
    mp.setenv("LORALOOP_DATA_DIR", str(store))
    pairs = store / "pairs.jsonl"
    pairs.write_text("\n".join(json.dumps(p) for p in preference_examples(320)))
    try:
        result = main(TrainConfig(method="reward", data=str(pairs), steps=60, heldout_fraction=0.15))
    finally:
        mp.undo()
    assert result.approved, result.reasons
    assert result.version is not None
    return result.version


def sessions(store: Path):  # type: ignore[no-untyped-def]
    return make_sessionmaker(make_engine(f"sqlite:///{store / 'loraloop.db'}"))


def test_a_reward_model_is_judged_on_heldout_pairs_and_never_served(store: Path, reward_version: str) -> None:
    with sessions(store).begin() as session:
        version = session.get(AdapterVersion, reward_version)
        assert version is not None and version.kind == "reward" and version.state == AdapterState.approved
        assert version.eval_report["metrics"]["reward_accuracy"] >= 0.8  # a learnable preference, far above chance
        assert version.eval_report["metrics"]["heldout_pairs"] >= 20
        assert reward_version not in registry.snapshot(session).versions  # routing never sees it
        with pytest.raises(InvalidTransition, match="not a chat adapter"):
            registry.set_champion(session, "default", reward_version)


@pytest.fixture(scope="module")
def grpo(store: Path, reward_version: str) -> TrainResult:
    """RLHF against the approved reward model (found in the registry, not named)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("LORALOOP_DATA_DIR", str(store))
    try:
        return main(TrainConfig(method="grpo", data=str(store / "pairs.jsonl"), steps=30, heldout_fraction=0.15))
    finally:
        mp.undo()


def test_grpo_raises_the_learned_reward_within_the_kl_budget(store: Path, reward_version: str, grpo: TrainResult,
                                                            demo_model: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.reward_model import RewardModel, generate

    result = grpo
    assert result.approved, result.reasons
    with sessions(store).begin() as session:
        version = session.get(AdapterVersion, result.version)
        assert version is not None and version.kind == "policy"
        assert version.provenance["reward_model"].endswith(reward_version)
        report = version.eval_report["metrics"]
    assert report["sampled_kl"] <= 2.0  # the gate's KL budget

    rewards = [h["reward"] for h in result.log_history if "reward" in h]
    kls = [h["kl"] for h in result.log_history if "kl" in h]
    assert rewards and kls  # the reward curve and the KL are in the run's history (and its report)
    judge = RewardModel(str(demo_model), Path(version.provenance["reward_model"]))
    tokenizer = AutoTokenizer.from_pretrained(demo_model)
    base = AutoModelForCausalLM.from_pretrained(demo_model, dtype=torch.float32).eval()
    policy = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(demo_model, dtype=torch.float32),
                                       result.adapter_dir).eval()
    with policy.disable_adapter():  # the adapter moved, the base under it did not
        assert torch.equal(logits(policy, tokenizer), logits(base, tokenizer))
    assert not torch.allclose(logits(policy, tokenizer), logits(base, tokenizer))
    prompts = heldout_prompts(24)

    def mean_reward(model) -> float:  # type: ignore[no-untyped-def]
        return statistics.mean(judge.score(p, generate(model, tokenizer, p, seed=i)) for i, p in enumerate(prompts))

    assert mean_reward(policy) > mean_reward(base) + 0.5


def test_sft_through_the_gate_and_both_policies_serve_from_vllm(store: Path, gateway: LiveGateway, demo_model: Path,
                                                                grpo: TrainResult,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORALOOP_DATA_DIR", str(store))
    data = store / "conversations.jsonl"
    data.write_text("\n".join(json.dumps(c) for c in conversations(200, FORMAL, seed=5)))
    sft = main(TrainConfig(method="sft", data=str(data), steps=30))  # 40 drifted to sampled KL 2.08 > 2.0
    assert sft.approved, sft.reasons
    with sessions(store).begin() as session:
        assert session.get(AdapterVersion, sft.version).eval_report["metrics"]["perplexity_ratio"] <= 1.5
        policies = [session.get(AdapterVersion, name) for name in (sft.version, grpo.version)]

    with make_sessionmaker(make_engine(gateway.settings.db_url)).begin() as session:
        served = {registry.register(session, Path(v.path), gateway.settings.adapter_store, DEMO_MODEL_NAME,
                                    prefix=v.name.split("-")[0], state=AdapterState.approved).name:
                  Path(v.path) for v in policies if v is not None}
    client = gateway.sdk()
    prompt = [{"role": "user", "content": "Hi, I'm Ada. Can you help me bake a cake?"}]
    deadline = time.monotonic() + 15
    for name, adapter in served.items():
        while True:  # the gateway picks new versions up within its registry refresh
            try:
                answer = client.chat.completions.create(model=name, messages=prompt, max_tokens=32, temperature=0)
                break
            except openai.NotFoundError:
                assert time.monotonic() < deadline, f"{name} never became servable"
                time.sleep(0.5)
        # vLLM applies the artifact exactly as PEFT does: the same greedy answer
        assert answer.choices[0].message.content == greedy(demo_model, adapter, prompt, 32)


def greedy(base: Path, adapter: Path, prompt: list[dict], tokens: int) -> str:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), adapter).eval()
    ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, do_sample=False, max_new_tokens=tokens, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
