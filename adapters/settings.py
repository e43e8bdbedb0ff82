"""Settings both sides need: where the data lives and which database holds it.

The gateway's settings extend these; the trainer reads just these. Environment variables
with the `LORALOOP_` prefix, nested with `__`.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEMO_MODEL_NAME = "loraloop-demo"  # the name the demo base model is served under
MAX_SEGMENTS = 8  # per alias (adapters/segments.py)


class StoreSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LORALOOP_", env_nested_delimiter="__", extra="ignore")

    data_dir: Path = Field(Path.home() / ".local/share/loraloop",
                           description="Demo model, adapter store, SQLite database, logs.")
    database_url: str = Field("", description="SQLAlchemy URL; empty: SQLite under data_dir.")
    base_model: str = Field("", description="HF id or local path of the base model; empty: the demo model.")
    retention_days: int = Field(0, description="`loraloop data purge` deletes older interactions; 0 keeps all.")
    max_segments: int = Field(MAX_SEGMENTS, ge=0, description=(
        "Most segments of one alias with an adapter of their own (adapters/segments.py); the rest share the "
        "alias's champion. Bounds vLLM's adapter slots and the metrics' alias labels."))

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'loraloop.db'}"

    @property
    def adapter_store(self) -> Path:
        return self.data_dir / "adapters"
