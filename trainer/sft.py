"""Supervised fine-tuning of a LoRA adapter on conversations (`messages` format).

The loss is on the assistant turns only, for any chat template: each conversation is
tokenised turn by turn from the template's own rendering, and only the text an assistant
turn adds (its content and end marker) is learned; prompts, system and user turns are
context. TRL's own `assistant_only_loss` needs templates with `{% generation %}` markers,
which most models' templates lack.

Overfitting is watched on held-out conversations (prompts never trained on): validation
loss every `eval_every` steps, the best checkpoint kept, training stopped after `patience`
evaluations without improvement. Forgetting is the gate's to judge (perplexity ratio).
"""

from __future__ import annotations

from typing import Any

from trainer.train_config import TrainConfig


def assistant_masked(tokenizer, messages: list[dict]) -> dict[str, list[int]]:  # type: ignore[no-untyped-def]
    """{"input_ids", "assistant_masks"}: 1 on tokens an assistant turn adds, 0 elsewhere."""
    ids: list[int] = []
    mask: list[int] = []
    rendered = ""
    for i, message in enumerate(messages):
        if message["role"] == "assistant":
            context = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
            ids, mask, rendered = _extend(tokenizer, ids, mask, rendered, context, 0)
        upto = tokenizer.apply_chat_template(messages[:i + 1], tokenize=False)
        ids, mask, rendered = _extend(tokenizer, ids, mask, rendered, upto, int(message["role"] == "assistant"))
    if 1 not in mask:
        raise ValueError("a conversation has no assistant turn to learn from")
    return {"input_ids": ids, "assistant_masks": mask}


def _extend(tokenizer, ids: list[int], mask: list[int], rendered: str, upto: str,  # type: ignore[no-untyped-def]
            bit: int) -> tuple[list[int], list[int], str]:
    if not upto.startswith(rendered):
        raise ValueError("the chat template renders a conversation differently from its own beginning; "
                         "turn-by-turn loss masking needs a template that only appends")
    new = tokenizer(upto[len(rendered):], add_special_tokens=False)["input_ids"]
    return ids + new, mask + [bit] * len(new), upto


def build_trainer(cfg: TrainConfig, base_model: str, out: Any, train: list[dict], heldout: list[dict],  # type: ignore[no-untyped-def]
                  init_adapter: Any = None):
    """An SFTTrainer of a fresh LoRA adapter, or with `init_adapter` (a folder) of that
    adapter's weights, trained further (its own rank and modules)."""
    import datasets
    import trl
    from transformers import AutoTokenizer, EarlyStoppingCallback

    from trainer.models import load_causal_lm, lora_config, trainer_args

    tokenizer = AutoTokenizer.from_pretrained(base_model)

    def dataset(examples: list[dict]) -> datasets.Dataset:
        return datasets.Dataset.from_list([assistant_masked(tokenizer, e["messages"]) for e in examples])

    args: dict[str, Any] = trainer_args(cfg, out) | {"max_length": cfg.max_length}
    callbacks: list[Any] = []
    if heldout and cfg.eval_every:
        # save_total_limit 1 keeps only the best adapter checkpoint on disk (a few MB)
        args |= dict(eval_strategy="steps", eval_steps=cfg.eval_every, save_strategy="steps",
                     save_steps=cfg.eval_every, save_total_limit=1, load_best_model_at_end=True,
                     metric_for_best_model="eval_loss", greater_is_better=False,
                     per_device_eval_batch_size=cfg.batch_size)
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.patience))
    model = load_causal_lm(base_model, cfg.qlora)
    if init_adapter is not None:
        import peft

        model = peft.PeftModel.from_pretrained(model, init_adapter, is_trainable=True)
    return trl.SFTTrainer(
        model=model, args=trl.SFTConfig(**args), train_dataset=dataset(train),
        eval_dataset=dataset(heldout) if heldout and cfg.eval_every else None, processing_class=tokenizer,
        peft_config=None if init_adapter is not None else lora_config(cfg.lora_r, cfg.lora_alpha),
        callbacks=callbacks)
