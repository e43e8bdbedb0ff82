"""Typed settings from the environment: `LORALOOP_<NAME>`, nested with `__`
(`LORALOOP_ENGINE__MAX_LORAS=8`). Nothing reads the environment outside this module."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import NoDecode

from adapters.settings import DEMO_MODEL_NAME, StoreSettings

__all__ = ["DEMO_MODEL_NAME", "EngineSettings", "ExperimentSettings", "Settings"]



class EngineSettings(BaseModel):
    """The embedded vLLM server `loraloop serve` supervises when no upstreams are given."""

    port: int = Field(8100, description="Loopback port of the supervised vLLM server.")
    max_loras: int = Field(4, description="Adapters one batch can mix (vLLM --max-loras).")
    max_lora_rank: int = Field(16, description="Largest adapter rank accepted (--max-lora-rank).")
    max_model_len: int = Field(512, description="Context length (--max-model-len).")
    kv_cache_gib: int = Field(1, description="CPU KV cache size (VLLM_CPU_KVCACHE_SPACE).")
    dtype: str = Field("auto", description="vLLM --dtype; float32 gives exact HF parity on CPU.")
    extra_args: list[str] = Field(default_factory=list, description="More vLLM CLI arguments.")
    responses_store: bool = Field(True, description="vLLM keeps Responses API answers for `GET /v1/responses/{id}` "
                                  "and `previous_response_id` (VLLM_ENABLE_RESPONSES_API_STORE). In vLLM's memory, "
                                  "never evicted: it grows until the engine restarts.")
    startup_timeout_s: float = Field(300, description="How long vLLM may take to become healthy.")


class ExperimentSettings(BaseModel):
    """How A/B experiments are judged (adapters/experiments.py)."""

    check_interval_s: float = Field(10.0, description="How often running experiments are judged.")
    auto_start: bool = Field(True, description="Approved versions trained for an alias start an experiment.")
    supersede_factor: float = Field(2.0, description="A newer approved candidate that learned from this many times "
                                    "the canary's feedback replaces it while its test is undecided (0: never).")
    alpha: float = Field(0.05, description="Chance of a decision when the canary is no different.")
    tau: float = Field(0.1, description="Thumbs-up rate difference the test is tuned to detect.")
    complaint_tau: float = Field(0.03, description="Thumbs-down per served answer difference, likewise.")
    min_ratings: int = Field(30, description="Ratings per arm before the test may decide.")
    prior_lift: float = Field(0.1, ge=0, le=0.5, description="The share test's prior is centred on this thumbs-up rate "
                              "difference when the gate's reward model preferred the canary (0: never).")
    default_share: float = Field(0.1, description="Canary share of users when none is given.")
    default_max_hours: float = Field(72.0, description="An experiment undecided this long rolls back.")
    guardrail_min_requests: int = Field(50, description="Requests per arm before guardrails apply.")
    max_error_rate_increase: float = Field(0.02, description="Rollback: canary error rate over the champion's + this.")
    max_latency_ratio: float = Field(2.0, description="Rollback: canary mean latency over the champion's times this.")
    min_latency_increase_ms: float = Field(100.0, description="...and at least this many ms slower.")

    def policy(self):  # type: ignore[no-untyped-def]
        from adapters.experiments import Policy

        return Policy(alpha=self.alpha, tau=self.tau, complaint_tau=self.complaint_tau, min_ratings=self.min_ratings,
                      prior_lift=self.prior_lift,
                      auto_start=self.auto_start, supersede_factor=self.supersede_factor,
                      default_share=self.default_share, default_max_hours=self.default_max_hours,
                      guardrail_min_requests=self.guardrail_min_requests,
                      max_error_rate_increase=self.max_error_rate_increase,
                      max_latency_ratio=self.max_latency_ratio,
                      min_latency_increase_ms=self.min_latency_increase_ms)


class Settings(StoreSettings):

    environment: Literal["development", "production"] = "production"
    auth: Literal["keys", "none"] = Field(
        "keys", description="'none' serves without API keys; allowed only in development.")
    host: str = "127.0.0.1"
    port: int = 8000
    admin_api: bool = Field(True, description="Serve the admin API (/admin/*); false: the CLI only.")
    admin_port: int | None = Field(None, description="Serve the admin API only on this port (gateway/listeners.py).")
    admin_host: str = Field("127.0.0.1", description="Interface of the admin port.")
    forwarded_allow_ips: str = Field(
        "127.0.0.1", description="Proxies whose X-Forwarded-For is believed (addresses or CIDRs, comma "
                                 "separated): the client address per-address limits count.")
    metrics_public: bool = Field(
        False, description="Serve /metrics and /ready's details to anyone (a trusted network only): "
                           "they name upstreams, aliases and versions.")

    upstreams: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="vLLM base URLs, comma separated. Empty: start and supervise one.")
    served_model_name: str = Field(
        "", description="Name apps use for the base model; empty: the upstream's own name.")
    upstream_api_key: str = Field(
        "", description="Bearer token the gateway sends to vLLM replicas (vLLM --api-key); empty: none.")

    max_body_bytes: int = Field(4 << 20, description="Larger request bodies get 413.")
    connect_timeout_s: float = 3.0
    upstream_timeout_s: float = Field(300.0, description="Max wait for an upstream's next bytes.")
    health_interval_s: float = Field(2.0, description="Seconds between upstream health checks.")
    retry_after_s: int = Field(5, description="Retry-After sent with 503 when no upstream is up.")
    registry_refresh_s: float = Field(2.0, description="How stale the routing table may get.")
    auth_cache_ttl_s: float = Field(5.0, description="How long a revoked key may still pass.")
    auth_failures_per_minute: int = Field(
        60, description="Unknown keys one client address may try a minute before 429 (0: no limit).")
    rate_limit_rpm: int = Field(0, description="Requests per minute per key (0: unlimited); keys may override.")
    rate_limit_burst_s: float = Field(10.0, description="A key may burst this many seconds of its rate.")
    rate_limit_redis_url: str | None = Field(
        None, description="redis://host:6379/0: rate limits hold across all gateway replicas; none: per replica.")
    rate_limit_redis_prefix: str = Field(
        "loraloop:ratelimit:", description="Prefix of the rate-limit keys in Redis (deployments sharing one).")

    log_queue_size: int = Field(10_000, description="Interactions waiting to be written, at most.")
    log_queue_max_bytes: int = Field(128 << 20, description="...and at most this many bytes of them.")
    log_overflow: Literal["drop", "reject"] = Field(
        "drop", description="Log queue full: drop the entry (counted) or refuse completions with 503.")
    feedback_comment_max_chars: int = Field(2000, description="Longer feedback comments get 400.")

    stats_refresh_s: float = Field(15.0, description="How often /metrics' database figures are re-read.")
    drift_window_minutes: float = Field(60.0, description="Recent prompts compared for prompt drift.")

    engine: EngineSettings = Field(default_factory=EngineSettings)
    experiments: ExperimentSettings = Field(default_factory=ExperimentSettings)

    @field_validator("upstreams", mode="before")
    @classmethod
    def _split_urls(cls, value: object) -> object:
        if isinstance(value, str):
            return [u.strip().rstrip("/") for u in value.split(",") if u.strip()]
        return value

    @model_validator(mode="after")
    def _refuse_insecure(self) -> Settings:
        if self.auth == "none" and self.environment != "development":
            raise ValueError("LORALOOP_AUTH=none is only allowed with LORALOOP_ENVIRONMENT=development")
        return self

    @property
    def embedded(self) -> bool:
        """True when loraloop starts its own vLLM rather than fronting existing ones."""
        return not self.upstreams
