"""An OpenAI client whose every request goes to a ClusterPool, unchanged otherwise.

    python examples/openai_through_the_pool.py /etc/clusterpool/routing.json

In a pod, mount the ConfigMap `<pool>-routing` at /etc/clusterpool; outside one, use
ConfigMapTable(namespace, pool) instead of FileTable (it watches the ConfigMap).
"""

import sys

import httpx
import openai

from clusterpool.client import FileTable, PoolClient, PoolTransport


def main(table_path: str) -> None:
    pool = PoolClient(FileTable(table_path))
    client = openai.OpenAI(
        base_url="http://pool/v1",  # the host is replaced per request by the chosen endpoint
        api_key="sk-...",
        http_client=httpx.Client(transport=PoolTransport(pool)),
    )
    reply = client.chat.completions.create(model="llama-3-8b", messages=[{"role": "user", "content": "Hello"}])
    print(reply.choices[0].message.content)


if __name__ == "__main__":
    main(sys.argv[1])
