"""The gateway: an OpenAI-compatible HTTP/1.1 reverse proxy in front of ClusterPools, routing
with the SDK's PoolClient (docs/gateway.md). `python -m clusterpool.gateway`. Never imports kopf."""
