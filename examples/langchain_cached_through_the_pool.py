"""LangChain's ChatOpenAI routed through a ClusterPool, its answers cached in the pool's
cache (spec.cache: memory, Redis or layered), both following the routing table.

    python examples/langchain_cached_through_the_pool.py /etc/clusterpool/routing.json

The second, identical question is answered from the cache without a request.
"""

import sys

import httpx
from langchain_core.globals import set_llm_cache
from langchain_openai import ChatOpenAI

from clusterpool.cache.langchain import PoolLLMCache
from clusterpool.client import FileTable, PoolCache, PoolClient, PoolTransport


def main(table_path: str) -> None:
    table = FileTable(table_path)
    set_llm_cache(PoolLLMCache(PoolCache(table)))  # the Redis password comes from the Secret the table names
    llm = ChatOpenAI(
        model="llama-3-8b",
        base_url="http://pool/v1",  # the host is replaced per request by the chosen endpoint
        api_key="sk-...",
        http_client=httpx.Client(transport=PoolTransport(PoolClient(table))),
    )
    for _ in range(2):
        print(llm.invoke("Hello").content)


if __name__ == "__main__":
    main(sys.argv[1])
