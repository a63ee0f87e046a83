"""The server's configuration (`configs/server.yaml`), validated at load time.

Variants come from two places: every finished model in `--models-dir` (each gets the defaults), and the
`variants` list of the YAML, which can point elsewhere and override engine settings and budgets per variant.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from l2s.adapters import VLLM_RANKS, adapter_base, is_adapter
from l2s.cards import find_models, read_card
from l2s.jsonl import CorruptFile, read_yaml
from l2s.models import ModelNotFound, resolve_model
from l2s.registry import check_variant_name, registered_variants

logger = logging.getLogger("l2s.server")
EFFORTS = ("none", "low", "medium", "high")
ADAPTER_INHERITS = {"engine", "reasoning", "max_waiting", "ray"}  # a LoRA adapter's: its base variant's (the engine's)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StructuredOutputs(Strict):
    """How vLLM constrains answers to a `response_format` (its structured outputs)."""

    backend: Literal["auto", "xgrammar", "guidance", "outlines", "lm-format-enforcer"] = "auto"
    compact_json: bool = Field(
        False,
        description="JSON without free whitespace (vLLM's disable_any_whitespace; needs backend xgrammar or "
        "guidance): small models otherwise tend to fill their whole budget with whitespace",
    )

    @model_validator(mode="after")
    def _compact_needs_backend(self) -> StructuredOutputs:
        if self.compact_json and self.backend not in ("xgrammar", "guidance"):
            raise ValueError("compact_json needs backend xgrammar or guidance")
        return self


class EngineConfig(Strict):
    """Settings passed to the vLLM engine of one variant."""

    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto: the model's own on a GPU, float32 on the CPU"
    )
    max_model_len: int | None = Field(None, gt=0, description="prompt + completion tokens (default: the model's)")
    kv_cache_gib: int = Field(1, gt=0, description="KV-cache space in GiB (VLLM_CPU_KVCACHE_SPACE on CPU)")
    gpu_memory_utilization: float = Field(0.3, gt=0, le=1, description="share of GPU memory (CUDA only)")
    tensor_parallel_size: int = Field(1, gt=0)
    data_parallel_size: int = Field(1, gt=0)
    max_num_seqs: int = Field(64, gt=0, description="sequences the engine runs at once")
    structured_outputs: StructuredOutputs = StructuredOutputs()
    max_loras: int | None = Field(
        None, ge=1, description="LoRA adapters in one batch (vLLM's max_loras; default: every adapter hosted on it)"
    )
    max_lora_rank: int | None = Field(
        None, description="the largest adapter rank it takes (default: its adapters' largest, rounded up)"
    )
    cpu_threads_bind: str | None = Field(
        None,
        description="CPU only: VLLM_CPU_OMP_THREADS_BIND for this engine ('auto', 'nobind', '0', '0-3'); "
        "default: engines take the machine's cores in turn, one each",
    )

    @field_validator("max_lora_rank")
    @classmethod
    def _a_rank_vllm_takes(cls, rank: int | None) -> int | None:
        if rank is not None and rank not in VLLM_RANKS:
            raise ValueError(f"max_lora_rank must be one of {VLLM_RANKS} (vLLM's)")
        return rank


class EffortBudgets(Strict):
    """Thinking-token budget behind each `reasoning_effort` (−1 = unlimited); `none` is always 0."""

    low: int = Field(16, ge=-1)
    medium: int = Field(64, ge=-1)
    high: int = Field(-1, ge=-1)

    @model_validator(mode="after")
    def _nested(self) -> EffortBudgets:
        order = [float("inf") if b == -1 else b for b in (self.low, self.medium, self.high)]
        if order != sorted(order):
            raise ValueError("effort budgets must be nested: low <= medium <= high")
        return self


class ReasoningConfig(Strict):
    """A variant's reasoning format (l2s/formats.py); what is not set is detected from its tokenizer and chat
    template: markers among the known pairs that are single tokens, the block opened in the prompt when the
    template's generation prompt ends with the start marker."""

    enabled: bool | None = Field(None, description="false: a plain model, all of its output is content")
    start: str | None = Field(None, description="the start marker (with `end`)")
    end: str | None = None
    start_in_prompt: bool | None = Field(None, description="the chat template opens the reasoning block")

    @model_validator(mode="after")
    def _both_markers(self) -> ReasoningConfig:
        if (self.start is None) != (self.end is None):
            raise ValueError("give both reasoning markers, start and end, or neither")
        return self


class Autoscaling(Strict):
    """Ray Serve's autoscaling of a variant's replicas: between `min_replicas` and `max_replicas`, aiming at
    `target_ongoing_requests` requests in each."""

    min_replicas: int = Field(1, ge=1, description="at least one: a variant with none would refuse every request")
    max_replicas: int = Field(ge=1)
    target_ongoing_requests: float = Field(16, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError("autoscaling: min_replicas must not exceed max_replicas")
        return self


class RayDeployment(Strict):
    """How `l2s serve --ray` runs a variant: a Ray Serve deployment of `replicas` (or `autoscaling`) replicas,
    each holding one vLLM engine with these resources. The single-process server ignores it."""

    replicas: int = Field(1, ge=1, description="a fixed number of replicas (unless `autoscaling` is set)")
    autoscaling: Autoscaling | None = None
    num_cpus: float = Field(1, ge=0, description="CPUs Ray reserves for each replica")
    num_gpus: float | None = Field(
        None, ge=0, description="GPUs per replica (default: the engine's tensor_parallel_size on a GPU machine, else 0)"
    )
    stream_interval_ms: float = Field(
        50,
        ge=0,
        description="a replica sends a request's new tokens to the ingress at most this often (at once until the "
        "first text): every message through Ray costs CPU on the replica, the ingress and the proxy, one per token is "
        "the most costly (50: Ray Serve LLM's stream batching interval). Raise it where the CPU is short: at 32 "
        "streams of ~15 tokens/s each, 50 ms joins nothing; 250 ms served 2-3x the tokens/s on a 2-core machine "
        "(README)",
    )


class VariantConfig(Strict):
    name: str
    path: Path
    base: str | None = Field(
        None,
        description="for a LoRA adapter: the hosted variant whose engine serves it (default: the one at the path "
        "or hub id its adapter_config.json names, else the one named like its last part)",
    )
    engine: EngineConfig = EngineConfig()
    reasoning: ReasoningConfig = ReasoningConfig()
    chat_template_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="passed to the chat template for every request (a request's own win)"
    )
    efforts: EffortBudgets = EffortBudgets()
    max_thinking_tokens: int = Field(-1, ge=-1, description="ceiling on any request's reasoning (−1: none)")
    tool_parser: str | None = Field(
        None, description="vLLM's tool-call parser for this model (hermes, llama3_json, ...): `tools` honoured"
    )
    max_waiting: int = Field(256, ge=0, description="queued requests beyond max_num_seqs before 429")
    ray: RayDeployment = RayDeployment()

    @field_validator("name")
    @classmethod
    def _servable_name(cls, name: str) -> str:
        return check_variant_name(name)  # the one rule, shared with the registry and `--register`


class AutoRule(Strict):
    max_budget: int = Field(ge=0, description="requests with a thinking budget up to this go to `variant`")
    variant: str


class AutoPolicy(Strict):
    """`model: auto` without a calibration file: the first rule whose max_budget covers the request's
    budget picks the variant; unbudgeted requests (and budgets above every rule) go to `default`."""

    rules: list[AutoRule] = []
    default: str | None = None


class ServerConfig(Strict):
    variants: list[VariantConfig] = []
    defaults: VariantConfig | None = None  # engine/effort settings for variants found in the models dir
    auto: AutoPolicy = AutoPolicy()
    shutdown_grace_seconds: float = Field(10.0, ge=0)
    max_engine_restarts: int = Field(
        3,
        ge=0,
        description="restarts in place of a variant whose engine died; one more death and the server exits "
        "non-zero, for its supervisor to restart it",
    )
    max_body_bytes: int = Field(4 * 2**20, gt=0, description="larger request bodies are refused with 413")
    keep_alive_seconds: float = Field(
        75.0,
        gt=0,
        description="how long an idle connection stays open; above the usual 60 s of clients' pools and load "
        "balancers, so the server is never the side that closes a connection a client is about to reuse",
    )

    @classmethod
    def load(cls, path: str | Path | None, models_dir: str | Path | None, raw: dict | None = None) -> ServerConfig:
        """From the YAML at `path` (or the mapping `raw`, as a RayService manifest gives it), plus every finished
        model in `models_dir`."""
        raw = dict(raw) if raw is not None else read_yaml(path, "server config") if path else {}
        where = path or "the server config"
        defaults = raw.pop("defaults", None) or {}
        if not isinstance(defaults, dict):
            raise CorruptFile(f"{where}: `defaults` is not a mapping of variant settings")
        try:
            config = cls.model_validate({**raw, "defaults": None})
            found = dict(find_models(models_dir)) if models_dir is not None else {}
            found.update({name: Path(path) for name, path in registered_variants().items() if Path(path).is_dir()})
            named = {variant.name for variant in config.variants}
            for name, model_path in found.items():
                role = (read_card(model_path) or {}).get("role")
                if name not in named and role != "base":
                    variant = {**defaults, "name": name, "path": model_path}
                    if is_adapter(model_path):  # served on its base's engine, with the base's format
                        variant = {k: v for k, v in variant.items() if k not in ADAPTER_INHERITS}
                    config.variants.append(VariantConfig.model_validate(variant))
            config._check_variants(asked_for=named)
            if "auto" not in raw:
                config.auto = auto_policy_from_cards(config.variants)
            config._check_auto()
        except ValidationError as error:
            raise CorruptFile(f"{where}: not a valid server config:\n{error}") from None
        except CorruptFile:
            raise  # (a registry or card that does not read: its own message names it)
        except ValueError as error:
            raise CorruptFile(f"{where}: {error}") from None
        return config

    def _check_variants(self, asked_for: set[str]) -> None:
        """Names unique, paths resolved, each LoRA adapter on a hosted base. An adapter found in the models dir or
        the registry (not in `asked_for`, the config's own list) whose base is not hosted is left out, with a
        warning: one stray adapter does not keep the rest from being served."""
        names = [variant.name for variant in self.variants]
        if len(names) != len(set(names)):
            raise ValueError(f"variant names repeat: {names}")
        for variant in self.variants:
            try:  # a directory, or a hub id through the Hugging Face cache
                variant.path = resolve_model(variant.path)
            except ModelNotFound as error:
                raise ValueError(f"variant {variant.name}: {error}") from None
        for variant in list(self.variants):
            if not is_adapter(variant.path):
                continue
            try:
                variant.base = self._adapter_host(variant)
            except ValueError as error:
                if variant.name in asked_for:
                    raise
                logger.warning("not serving %s: %s", variant.name, error)
                self.variants.remove(variant)
        for variant in self.variants:
            if variant.base is not None and not is_adapter(variant.path):
                raise ValueError(f"variant {variant.name}: `base` is for LoRA adapters, and {variant.path} is a model")

    def _check_auto(self) -> None:
        names = [variant.name for variant in self.variants]
        for target in [rule.variant for rule in self.auto.rules] + [self.auto.default]:
            if target is not None and target not in names:
                raise ValueError(f"auto policy names {target!r}, which is not a hosted variant ({names})")

    def _adapter_host(self, adapter: VariantConfig) -> str:
        """The hosted full model whose engine serves LoRA adapter `adapter` (ValueError: refused at startup)."""
        inherited = ADAPTER_INHERITS & adapter.model_fields_set
        if inherited:
            raise ValueError(
                f"variant {adapter.name} is a LoRA adapter: it runs on its base's engine, with its base's "
                f"{' and '.join(sorted(inherited))} settings (set them on the base variant)"
            )
        full = [variant for variant in self.variants if not is_adapter(variant.path)]
        if adapter.base is not None:
            host = next((v for v in full if v.name == adapter.base), None)
            if host is None:
                raise ValueError(
                    f"variant {adapter.name}: its base {adapter.base!r} is not a hosted full model "
                    f"({[v.name for v in full]})"
                )
            return host.name
        base = adapter_base(adapter.path)
        try:  # a directory, or a hub id through the Hugging Face cache (where the hosted copy was resolved)
            base_path = resolve_model(base).resolve()
        except ModelNotFound:
            base_path = None  # moved or not downloaded: only the name can match
        if base_path is not None:
            host = next((v for v in full if v.path.resolve() == base_path), None)
        else:
            host = next((v for v in full if v.name == Path(base).name), None)
        if host is None:
            raise ValueError(
                f"variant {adapter.name} is a LoRA adapter of {base}, which no hosted variant serves: host that "
                f"model too, or name the variant to run it on with `base:`"
            )
        return host.name

    def variant(self, name: str) -> VariantConfig | None:
        return next((variant for variant in self.variants if variant.name == name), None)


def auto_policy_from_cards(variants: list[VariantConfig]) -> AutoPolicy:
    """`model: auto` when the config sets no policy, from what the hosted variants' cards measured
    (`evaluation`: accuracy and mean reasoning tokens): unbudgeted requests go to the most accurate variant (else
    the one whose card says role long), requests with a budget up to its `low` effort to the variant that
    reasons least. A calibration file (`l2s serve --calibration`) takes over from both."""
    cards = {variant.name: read_card(variant.path) or {} for variant in variants}
    measured = []
    for variant in variants:
        evaluation = cards[variant.name].get("evaluation") or {}
        if "accuracy" in evaluation and "mean_reasoning_tokens" in evaluation:
            measured.append((variant, evaluation["accuracy"], evaluation["mean_reasoning_tokens"]))
    if measured:
        default = max(measured, key=lambda m: (m[1], -m[2]))[0]
    else:
        default = next((v for v in variants if cards[v.name].get("role") == "long"), None)
    if default is None:
        return AutoPolicy()
    rules = []
    if measured:
        thrifty = min(measured, key=lambda m: (m[2], -m[1]))[0]
        if thrifty.name != default.name:
            rules.append(AutoRule(max_budget=thrifty.efforts.low, variant=thrifty.name))
    return AutoPolicy(rules=rules, default=default.name)
