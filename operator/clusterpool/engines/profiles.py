"""The engine profiles: one table of each engine's health path, deeper probe and load gauges.

Pure data (no kopf, no sockets), read by the CRD model (`spec.engine`), the operator's
probes (the health path when the spec names none) and the load scraper of the SDK and the
gateway (which metric names to look for). A gauge lists the names engines have used for it
across versions, newest first; the first one present in a scrape is used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

Engine = Literal["vLLM", "SGLang", "TGI", "LlamaCpp", "Ollama", "OpenAI"]
ENGINES: tuple[Engine, ...] = get_args(Engine)
GaugeKind = Literal["waiting", "running", "kvUsage"]


@dataclass(frozen=True)
class Gauge:
    """One load signal and the Prometheus names it has had, newest first. `kind` says what
    it measures: waiting (requests queued), running (sequences in the batch) or kvUsage (the
    share of the KV cache in use, 0 to 1)."""

    kind: GaugeKind
    names: tuple[str, ...]


@dataclass(frozen=True)
class EngineProfile:
    """What one engine serves: its liveness path, an optional deeper probe (a request that
    exercises the model or its scheduler), where its metrics are and which load gauges they
    hold. `busy_status` is the status the engine answers when its own queue is full (a
    passive load signal where there are no metrics)."""

    engine: Engine
    health_path: str
    deep_probe_path: str | None = None
    metrics_path: str | None = "/metrics"
    gauges: tuple[Gauge, ...] = ()
    busy_status: int | None = None

    def gauge(self, kind: GaugeKind) -> Gauge | None:
        return next((g for g in self.gauges if g.kind == kind), None)

    def describe_missing(self, kinds: tuple[str, ...]) -> str:
        """What to tell people when the engine's metrics lack gauges this profile lists."""
        names = "; ".join(f"{g.kind}: {' or '.join(g.names)}" for g in self.gauges if g.kind in kinds)
        return (
            f"the {self.engine} profile's gauges are not in {self.metrics_path} ({names}); "
            "check spec.engine and the engine's version (clients use their own signals for these)"
        )


PROFILES: dict[Engine, EngineProfile] = {
    "vLLM": EngineProfile(
        "vLLM",
        health_path="/health",
        gauges=(
            Gauge("waiting", ("vllm:num_requests_waiting",)),
            Gauge("running", ("vllm:num_requests_running",)),
            Gauge("kvUsage", ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")),
        ),
    ),
    "SGLang": EngineProfile(
        "SGLang",
        health_path="/health",
        deep_probe_path="/health_generate",
        gauges=(
            Gauge("waiting", ("sglang:num_queue_reqs",)),
            Gauge("running", ("sglang:num_running_reqs",)),
            Gauge("kvUsage", ("sglang:token_usage",)),
        ),
    ),
    "TGI": EngineProfile(
        "TGI",
        health_path="/health",
        gauges=(Gauge("waiting", ("tgi_queue_size",)), Gauge("running", ("tgi_batch_current_size",))),
    ),
    "LlamaCpp": EngineProfile(
        "LlamaCpp",
        health_path="/health",
        deep_probe_path="/slots",
        gauges=(
            Gauge("waiting", ("llamacpp:requests_deferred",)),
            Gauge("running", ("llamacpp:requests_processing",)),
        ),  # older servers had llamacpp:kv_cache_usage_ratio; current ones report no KV use
    ),
    "Ollama": EngineProfile(
        "Ollama", health_path="/", deep_probe_path="/api/version", metrics_path=None, busy_status=503
    ),
    "OpenAI": EngineProfile("OpenAI", health_path="/v1/models", metrics_path=None),
}


def find_profile(engine: str | None) -> EngineProfile | None:
    """The profile of an engine name, None for None or a name this version does not know
    (a routing table from a newer operator): the client then uses its own signals."""
    return next((p for name, p in PROFILES.items() if name == engine), None)


def profile_for(engine: str | None) -> EngineProfile | None:
    """The profile of an engine name as `spec.engine` spells it; None for None."""
    if engine is None:
        return None
    try:
        return PROFILES[engine]  # type: ignore[index]
    except KeyError:
        raise ValueError(f"unknown engine {engine!r}; expected one of {', '.join(ENGINES)}") from None
