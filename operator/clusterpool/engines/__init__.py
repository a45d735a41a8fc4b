"""Engine profiles: what each LLM inference engine exposes for health and load (pure data)."""

from clusterpool.engines.profiles import ENGINES, PROFILES, Engine, EngineProfile, Gauge, find_profile, profile_for

__all__ = ["ENGINES", "PROFILES", "Engine", "EngineProfile", "Gauge", "find_profile", "profile_for"]
