"""Builds the demo base model offline: a byte-level BPE tokenizer and a tiny LLaMA, trained
from scratch (SFT, loss on assistant turns only) on the synthetic corpus in `corpus.py`.

The result is an ordinary Hugging Face model folder (config, safetensors, tokenizer with a
chat template, generation config) that vLLM, transformers and PEFT load like any other.
It is cached: the folder name carries a hash of the recipe, so changing the recipe builds a
new model and an unchanged recipe is built once.

    python -m trainer.demo_model --data-dir ~/.local/share/loraloop
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import random
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from trainer.demo_model.corpus import NAMES, TASKS, Style, make_conversations, make_prompt, style_of

log = logging.getLogger(__name__)

SPECIAL_TOKENS = ["<|pad|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}<|end|>"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@dataclass
class Recipe:
    """Everything that decides the demo model's weights; its hash names the cache folder."""

    seed: int = field(default=0, metadata={"help": "Seed for corpus, init and batching."})
    conversations: int = field(default=4096, metadata={"help": "Training conversations."})
    vocab_size: int = field(default=2048, metadata={"help": "Byte-level BPE vocabulary size."})
    hidden_size: int = field(default=256, metadata={"help": "Model width."})
    layers: int = field(default=6, metadata={"help": "Decoder layers."})
    heads: int = field(default=4, metadata={"help": "Attention heads (head dim 64)."})
    intermediate_size: int = field(default=768, metadata={"help": "MLP width."})
    epochs: int = field(default=3, metadata={"help": "Passes over the corpus."})
    batch_size: int = field(default=32, metadata={"help": "Conversations per step."})
    learning_rate: float = field(default=3e-3, metadata={"help": "Peak AdamW learning rate."})

    def fingerprint(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True) + json.dumps(TASKS) + json.dumps(NAMES)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def model_dir(data_dir: Path, recipe: Recipe) -> Path:
    return data_dir / "models" / f"demo-{recipe.fingerprint()}"


def ensure_demo_model(data_dir: Path, recipe: Recipe | None = None) -> Path:
    """Returns the cached demo model folder, building it first if it is not there yet."""
    recipe = recipe or Recipe()
    target = model_dir(data_dir, recipe)
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename: a crash mid-build never leaves a half model that
    # later runs would take for a finished one.
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".building-") as tmp:
        build(recipe, Path(tmp))
        try:
            os.rename(tmp, target)
        except OSError:  # another process finished first: keep theirs
            if not (target / "config.json").exists():
                raise
        Path(tmp).mkdir(exist_ok=True)  # let TemporaryDirectory clean up quietly
    return target


def train_tokenizer(texts: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<|pad|>", eos_token="<|end|>",
        additional_special_tokens=SPECIAL_TOKENS[2:],
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def encode(tokenizer, messages: list[dict]) -> tuple[list[int], list[int]]:
    """Token ids and labels for one conversation; only the assistant answer is learned."""
    prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    answer = messages[-1]["content"] + "<|end|>"
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    return prompt_ids + answer_ids, [-100] * len(prompt_ids) + answer_ids


def build(recipe: Recipe, out: Path) -> None:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    started = time.monotonic()
    random.seed(recipe.seed)
    torch.manual_seed(recipe.seed)
    conversations = make_conversations(recipe.conversations, seed=recipe.seed)
    texts = [m["content"] for conv in conversations for m in conv]
    tokenizer = train_tokenizer(texts, recipe.vocab_size)
    examples = [encode(tokenizer, conv) for conv in conversations]

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=recipe.hidden_size,
        intermediate_size=recipe.intermediate_size, num_hidden_layers=recipe.layers,
        num_attention_heads=recipe.heads, num_key_value_heads=recipe.heads,
        max_position_embeddings=512, tie_word_embeddings=False,
        bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    steps = recipe.epochs * (len(examples) // recipe.batch_size)
    optim = torch.optim.AdamW(model.parameters(), lr=recipe.learning_rate, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(optim, recipe.learning_rate, total_steps=steps,
                                                pct_start=0.1)
    order_rng = random.Random(recipe.seed)
    model.train()
    step = 0
    for epoch in range(recipe.epochs):
        order_rng.shuffle(examples)
        for start in range(0, len(examples) - recipe.batch_size + 1, recipe.batch_size):
            batch = examples[start:start + recipe.batch_size]
            width = max(len(ids) for ids, _ in batch)
            input_ids = torch.tensor([ids + [config.pad_token_id] * (width - len(ids)) for ids, _ in batch])
            labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in batch])
            attention = (torch.arange(width)[None, :] < torch.tensor([len(i) for i, _ in batch])[:, None]).long()
            loss = model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optim.step()
            sched.step()
            optim.zero_grad(set_to_none=True)
            step += 1
            if step % 50 == 0 or step == steps:
                log.info("demo model: epoch %d step %d/%d loss %.3f (%.0f s)",
                         epoch + 1, step, steps, loss.item(), time.monotonic() - started)

    model.eval()
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        do_sample=False, max_new_tokens=64,
    )
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    report = check_styles(model, tokenizer, seed=recipe.seed + 1)
    (out / "loraloop-demo.json").write_text(json.dumps(
        {"recipe": asdict(recipe), "fingerprint": recipe.fingerprint(),
         "parameters": sum(p.numel() for p in model.parameters()),
         "build_seconds": round(time.monotonic() - started, 1), "style_check": report},
        indent=2))
    log.info("demo model built in %.0f s: %s", time.monotonic() - started, report)


def check_styles(model, tokenizer, seed: int, samples: int = 48) -> dict:
    """Greedy answers to style-asking prompts: share well formed, share in the asked style."""
    import torch

    rng = random.Random(seed)
    well_formed = matched = 0
    for _ in range(samples):
        task, name, style = rng.randrange(len(TASKS)), rng.choice(NAMES), Style.random(rng)
        messages = [{"role": "system", "content": style.describe()},
                    {"role": "user", "content": make_prompt(task, name, rng)}]
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                            return_dict=True)["input_ids"]
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=64, do_sample=False)
        answer = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        got = style_of(answer, name)
        well_formed += got is not None
        matched += got == style
    return {"samples": samples, "well_formed": well_formed / samples, "style_followed": matched / samples}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    print(ensure_demo_model(args.data_dir.expanduser()))


if __name__ == "__main__":
    main()
