"""One OpenAI client for a pool serving several models: each request goes to the endpoints
labelled with the model it asks for (docs/labels.md), and waits up to 2 s for room when
they are all at their capacity.

    python examples/models_by_label.py /etc/clusterpool/routing.json

The pool's endpoints carry `labels: {model: <name>}` (see manifests/samples/labelled-pool.yaml);
label values allow no `/`, so a model called `org/name` is labelled `org_name` here.
"""

import json
import sys

import httpx
import openai

from clusterpool.client import FileTable, PoolClient, PoolTransport


def by_model(request: httpx.Request) -> dict[str, str] | None:
    """The selector of an OpenAI request: the `model` of its JSON body (none for requests
    without one, such as GET /v1/models)."""
    try:
        model = json.loads(request.content or b"{}").get("model")
    except (ValueError, AttributeError, httpx.RequestNotRead):
        return None
    return {"model": model.replace("/", "_")} if isinstance(model, str) else None


def main(table_path: str) -> None:
    pool = PoolClient(FileTable(table_path), capacity_wait=2.0)
    client = openai.OpenAI(
        base_url="http://pool/v1",
        api_key="sk-...",
        http_client=httpx.Client(transport=PoolTransport(pool, selector=by_model)),
    )
    for model in ("llama-3-8b", "qwen-2-7b"):
        reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hello"}])
        print(model, "->", reply.choices[0].message.content)


if __name__ == "__main__":
    main(sys.argv[1])
