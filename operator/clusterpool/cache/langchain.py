"""LangChain's LLM cache backed by the pool's cache (needs langchain-core, an optional extra).

    from langchain_core.globals import set_llm_cache
    from clusterpool.cache.langchain import PoolLLMCache
    set_llm_cache(PoolLLMCache(PoolCache(FileTable("/etc/clusterpool/routing.json"))))

Any cache with get/set works (PoolCache, LayeredCache, RedisCache, MemoryCache); async
methods use aget/aset when the cache has them. The key is the SHA-256 of the model's
settings (`llm_string`) and the prompt, so prompts of any length make short Redis keys.
Entries are the generations serialized by langchain-core; reading them back only builds
generation and AI message classes, so a shared Redis cannot make the application
instantiate anything else.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from typing import Any

from langchain_core.caches import RETURN_VAL_TYPE, BaseCache
from langchain_core.load import Serializable, dumps, loads
from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, Generation, GenerationChunk

log = logging.getLogger(__name__)
ALLOWED: list[type[Serializable]] = [
    Generation,
    GenerationChunk,
    ChatGeneration,
    ChatGenerationChunk,
    AIMessage,
    AIMessageChunk,
]


def cache_key(prompt: str, llm_string: str) -> str:
    return "lc:" + hashlib.sha256(f"{llm_string}\0{prompt}".encode()).hexdigest()


def _decode(raw: bytes | str | None) -> RETURN_VAL_TYPE | None:
    if raw is None:
        return None
    try:
        value = loads(raw.decode() if isinstance(raw, bytes) else raw, allowed_objects=ALLOWED)
    except Exception as exc:  # a foreign or outdated entry is a miss, not an error
        log.warning("ignoring an unreadable LangChain cache entry: %s", exc)
        return None
    if not isinstance(value, list) or not all(isinstance(g, Generation) for g in value):
        return None
    return value


def _encode(generations: Sequence[Generation]) -> str:
    return dumps(list(generations))


class PoolLLMCache(BaseCache):
    def __init__(self, cache: Any) -> None:
        self.cache = cache

    def lookup(self, prompt: str, llm_string: str) -> RETURN_VAL_TYPE | None:
        return _decode(self.cache.get(cache_key(prompt, llm_string)))

    def update(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> None:
        self.cache.set(cache_key(prompt, llm_string), _encode(return_val))

    async def alookup(self, prompt: str, llm_string: str) -> RETURN_VAL_TYPE | None:
        if hasattr(self.cache, "aget"):
            return _decode(await self.cache.aget(cache_key(prompt, llm_string)))
        return self.lookup(prompt, llm_string)

    async def aupdate(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> None:
        if hasattr(self.cache, "aset"):
            await self.cache.aset(cache_key(prompt, llm_string), _encode(return_val))
        else:
            self.update(prompt, llm_string, return_val)

    def clear(self, **kwargs: Any) -> None:
        """Empties this process's memory layer; Redis entries go with a version change."""
        for name in ("clear_local", "clear"):
            fn = getattr(self.cache, name, None)
            if fn is not None:
                fn()
                return
