"""LangChain's LLM cache backed by the pool's cache: ChatOpenAI against a real
OpenAI-compatible server on loopback, answers cached in a real Redis."""

import httpx
import pytest
from langchain_openai import ChatOpenAI

from backends import HTTPBackend, free_port
from clusterpool.cache import LayeredCache, MemoryCache, RedisCache, RedisConnection
from clusterpool.cache.langchain import PoolLLMCache, cache_key


@pytest.fixture
def llm_server():
    server = HTTPBackend("127.0.2.1", free_port(), name="llm").start()
    yield server
    server.stop()


def chat(server, cache):
    return ChatOpenAI(
        model="stub",
        base_url=f"http://{server.host}:{server.port}/v1",
        api_key="unused",
        max_retries=0,
        cache=cache,
        http_client=httpx.Client(),
        http_async_client=httpx.AsyncClient(),
    )


def layered(server):
    return LayeredCache(RedisCache.connect(RedisConnection(address=server.address), "cp:ns/llm:"), MemoryCache())


async def test_langchain_answers_come_from_the_pool_cache(llm_server, redis_server):
    redis = redis_server()
    first = layered(redis)
    llm = chat(llm_server, PoolLLMCache(first))
    assert llm.invoke("hello?").content == "hello from llm"
    assert llm.invoke("hello?").content == "hello from llm"
    assert llm_server.requests == 1  # the second answer came from the cache
    assert first.stats.local_hits == 1

    # another process (a fresh local layer) finds the answer in Redis
    second = layered(redis)
    other = chat(llm_server, PoolLLMCache(second))
    answer = await other.ainvoke("hello?")
    assert answer.content == "hello from llm"
    assert llm_server.requests == 1 and second.stats.remote_hits == 1

    # a different prompt is a different key
    await other.ainvoke("something else")
    assert llm_server.requests == 2
    first.close()
    second.close()


def test_a_foreign_entry_is_a_miss_not_an_error(llm_server):
    cache = MemoryCache()
    llm = chat(llm_server, PoolLLMCache(cache))
    llm.invoke("q")
    (key,) = cache.keys()
    cache.set(key, b'{"lc": 1, "type": "constructor", "id": ["os", "system"], "kwargs": {}}')
    assert llm.invoke("q").content == "hello from llm"  # not instantiated; asked again
    assert llm_server.requests == 2
    assert key.startswith("lc:") and len(key) == len(cache_key("q", "model"))
