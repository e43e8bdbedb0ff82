"""Loading the base model for training, in the precision the hardware affords.

CPU: fp32. CUDA: bf16, or with `qlora` the base in 4-bit NF4 (bitsandbytes, bf16 compute,
double quantisation) so a model several times the GPU's bf16 capacity still trains; the
LoRA weights themselves stay in full precision and are served on the unquantised base,
as in the QLoRA paper. QLoRA needs bitsandbytes' CUDA kernels, so it is refused elsewhere.
"""

from __future__ import annotations

from typing import Any

from trainer.train_config import TrainConfig

TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class QLoRAUnavailable(SystemExit):
    """QLoRA was asked for on a machine that cannot do it (a SystemExit: the CLI prints it)."""


def check_qlora() -> None:
    """Raises QLoRAUnavailable with what to do instead, unless 4-bit training can run here."""
    import torch

    if not torch.cuda.is_available():
        raise QLoRAUnavailable(
            "--qlora needs a CUDA GPU: the base is loaded in 4-bit NF4 by bitsandbytes, whose kernels are "
            "CUDA-only, and this machine has none. Train without --qlora (LoRA on the full-precision base) "
            "or run the trainer on a GPU machine.")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        raise QLoRAUnavailable(f"--qlora needs bitsandbytes ({exc}): pip install 'loraloop[qlora]'") from exc


def load_kwargs(qlora: bool) -> dict[str, Any]:
    """`from_pretrained` keyword arguments for the base on this machine."""
    import torch

    if qlora:
        check_qlora()
        from transformers import BitsAndBytesConfig

        return {"dtype": torch.bfloat16, "quantization_config": BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16,
            bnb_4bit_use_double_quant=True)}
    return {"dtype": torch.bfloat16 if torch.cuda.is_available() else torch.float32}


def load_causal_lm(base_model: str, qlora: bool = False):  # type: ignore[no-untyped-def]
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_model, **load_kwargs(qlora))
    if qlora:
        import peft

        # casts norms to fp32 and enables input grads, as LoRA on a frozen 4-bit base needs
        model = peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return model


def lora_config(r: int, alpha: int, task_type: str = "CAUSAL_LM", **extra: Any):  # type: ignore[no-untyped-def]
    import peft

    return peft.LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=TARGET_MODULES,
                           task_type=task_type, **extra)


def trainer_args(cfg: TrainConfig, out: Any) -> dict[str, Any]:
    """TrainingArguments shared by every method: fp32 and no gradient checkpointing on CPU
    (TRL's defaults refuse to run there), bf16 on CUDA, no checkpoints on disk."""
    import torch

    cuda = torch.cuda.is_available()
    return dict(
        output_dir=str(out / "checkpoints"), max_steps=cfg.steps, per_device_train_batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate, seed=cfg.seed, bf16=cuda, gradient_checkpointing=False,
        report_to="none", logging_steps=max(1, cfg.steps // 20), save_strategy="no",
        remove_unused_columns=False, use_cpu=not cuda, disable_tqdm=False,
    )
