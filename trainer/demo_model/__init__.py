"""The demo base model: built offline from a synthetic corpus, so loraloop runs anywhere."""

from trainer.demo_model.build import Recipe, ensure_demo_model

__all__ = ["Recipe", "ensure_demo_model"]
