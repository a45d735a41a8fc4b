#!/usr/bin/env python3
"""A fake LLM inference engine for tests and benchmarks: OpenAI-compatible, with each real
engine's health path and load metrics, a bounded batch, a waiting queue, a prefix cache
and failure injection that can be switched while it runs.

    python scripts/fake_engine.py --mode vllm --host 127.0.0.5 --port 18000

Modes: vllm, sglang, tgi, llamacpp, ollama, openai. In every mode: POST /v1/chat/completions
and /v1/completions (with `"stream": true` as server-sent events), GET /v1/models, and the
admin endpoints GET /admin/stats, POST /admin/faults (JSON, see Faults) and POST
/admin/reset (an empty prefix cache, no faults). The health path
and the /metrics names are the engine's own (see HEALTH and MetricsWriter).

Time model, per request: it waits for one of `max_running` slots (queue wait), then its
prompt is cut into blocks of `block_tokens` tokens (a token is 4 characters); the longest
run of leading blocks found in the prefix cache (an LRU of chained block hashes holding
`cache_blocks`) is free, the rest costs `prefill_ms_per_token` each, on top of `base_ms`;
then `max_tokens` tokens stream at `tokens_per_second`. So TTFT = base + uncached prompt
tokens x time per token + queue wait. Cheap enough for eight engines on one core: asyncio,
one hash per 64 characters of prompt, one sleep per streamed event.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import signal
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from aiohttp import web

from clusterpool.balancer.prefix import block_hashes, prompt_text

MODES = ("vllm", "sglang", "tgi", "llamacpp", "ollama", "openai")
CHARS_PER_TOKEN = 4
# Each engine's liveness path; an optional deeper probe is served too (SGLang, llama.cpp).
HEALTH = {
    "vllm": "/health",
    "sglang": "/health",
    "tgi": "/health",
    "llamacpp": "/health",
    "ollama": "/",
    "openai": "/v1/models",
}


@dataclass
class EngineConfig:
    mode: str = "vllm"
    model: str = "fake-model"
    max_running: int = 8  # sequences decoded at once (vLLM max_num_seqs, llama.cpp -np)
    max_waiting: int = 0  # requests queued beyond those; 0: no limit (Ollama's default is 512)
    base_ms: float = 5.0  # fixed part of the time to first token
    prefill_ms_per_token: float = 0.2  # per uncached prompt token
    tokens_per_second: float = 50.0  # decode rate per sequence
    tokens_per_event: int = 1  # tokens per streamed event (more: fewer wakeups)
    block_tokens: int = 16  # prefix-cache block size
    cache_blocks: int = 4096  # prefix-cache capacity
    kv_tokens: int = 65536  # KV capacity the usage gauge is a share of
    legacy_metrics: bool = False  # vLLM: gpu_cache_usage_perc instead of kv_cache_usage_perc


@dataclass
class Faults:
    """What to get wrong, switchable at run time (POST /admin/faults with these keys)."""

    error_rate: float = 0.0  # share of completions answered 500 at once
    hang_first_token: bool = False  # completions never send a first token
    reset_after_tokens: int = -1  # >= 0: drop the connection after this many streamed tokens
    metrics: str = "live"  # live, hang (/metrics never answers), frozen (the same numbers forever)
    slow_factor: float = 1.0  # every duration (prefill, decode, base) times this
    healthy: bool = True  # False: the health path answers 503


class PrefixCache:
    """An LRU of chained block hashes with a capacity in blocks."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._blocks: OrderedDict[bytes, None] = OrderedDict()

    def admit(self, hashes: list[bytes]) -> int:
        """How many leading blocks were cached; all of them are cached (and fresh) after."""
        hit = 0
        for h in hashes:
            if h not in self._blocks:
                break
            hit += 1
        for h in hashes:
            self._blocks[h] = None
            self._blocks.move_to_end(h)
        while len(self._blocks) > self.capacity:
            self._blocks.popitem(last=False)
        return hit


@dataclass
class Counters:
    requests: int = 0
    completed: int = 0
    errors: int = 0
    rejected: int = 0
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    generation_tokens: int = 0
    running: int = 0
    waiting: int = 0
    kv_tokens_used: int = 0


class MetricsWriter:
    """Prometheus text in each engine's names (the facts the profiles are written from)."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config

    def render(self, c: Counters) -> str | None:
        cfg = self.config
        model = f'model_name="{cfg.model}"'
        kv = min(1.0, c.kv_tokens_used / cfg.kv_tokens)
        lines: list[tuple[str, str, float]] = []
        if cfg.mode == "vllm":
            kv_name = "vllm:gpu_cache_usage_perc" if cfg.legacy_metrics else "vllm:kv_cache_usage_perc"
            lines = [
                ("vllm:num_requests_running", "gauge", c.running),
                ("vllm:num_requests_waiting", "gauge", c.waiting),
                (kv_name, "gauge", kv),
                ("vllm:prefix_cache_queries_total", "counter", c.prompt_tokens),
                ("vllm:prefix_cache_hits_total", "counter", c.cached_prompt_tokens),
                ("vllm:prompt_tokens_total", "counter", c.prompt_tokens),
                ("vllm:generation_tokens_total", "counter", c.generation_tokens),
            ]
        elif cfg.mode == "sglang":
            model = f'model_name="{cfg.model}"'
            hit = c.cached_prompt_tokens / c.prompt_tokens if c.prompt_tokens else 0.0
            lines = [
                ("sglang:num_running_reqs", "gauge", c.running),
                ("sglang:num_queue_reqs", "gauge", c.waiting),
                ("sglang:token_usage", "gauge", kv),
                ("sglang:cache_hit_rate", "gauge", hit),
                ("sglang:prompt_tokens_total", "counter", c.prompt_tokens),
                ("sglang:generation_tokens_total", "counter", c.generation_tokens),
            ]
        elif cfg.mode == "tgi":
            model = ""
            lines = [
                ("tgi_queue_size", "gauge", c.waiting),
                ("tgi_batch_current_size", "gauge", c.running),
                ("tgi_request_count", "counter", c.requests),
            ]
        elif cfg.mode == "llamacpp":
            model = ""
            lines = [
                ("llamacpp:requests_processing", "gauge", c.running),
                ("llamacpp:requests_deferred", "gauge", c.waiting),
                # llama.cpp counts prompt tokens processed, the cached ones apart
                ("llamacpp:prompt_tokens_total", "counter", c.prompt_tokens - c.cached_prompt_tokens),
                ("llamacpp:prompt_tokens_cached_total", "counter", c.cached_prompt_tokens),
                ("llamacpp:tokens_predicted_total", "counter", c.generation_tokens),
            ]
        else:
            return None  # Ollama and a generic OpenAI-compatible server have no /metrics
        out = []
        for name, kind, value in lines:
            out.append(f"# HELP {name} {name.split(':')[-1].replace('_', ' ')}\n# TYPE {name} {kind}\n")
            out.append(f"{name}{{{model}}} {float(value)}\n" if model else f"{name} {float(value)}\n")
        return "".join(out)


class OverloadedError(Exception):
    """The waiting queue is full."""


class Scheduler:
    """`max_running` slots and a bounded waiting queue in front of them."""

    def __init__(self, config: EngineConfig, counters: Counters) -> None:
        self.config = config
        self.counters = counters
        self._slots = asyncio.Semaphore(config.max_running)

    @contextlib.asynccontextmanager
    async def slot(self, kv_tokens: int) -> Any:
        c = self.counters
        if self.config.max_waiting and self._slots.locked() and c.waiting >= self.config.max_waiting:
            c.rejected += 1
            raise OverloadedError
        c.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            c.waiting -= 1
        c.running += 1
        c.kv_tokens_used += kv_tokens
        try:
            yield
        finally:
            c.running -= 1
            c.kv_tokens_used -= kv_tokens
            self._slots.release()


class FakeEngine:
    """The server: `await start()`, `await stop()`; or `python scripts/fake_engine.py`."""

    def __init__(self, config: EngineConfig, host: str = "127.0.0.1", port: int = 0) -> None:
        if config.mode not in MODES:
            raise ValueError(f"mode {config.mode!r}: expected one of {', '.join(MODES)}")
        self.config, self.host, self.port = config, host, port
        self.faults = Faults()
        self.counters = Counters()
        self.cache = PrefixCache(config.cache_blocks)
        self.scheduler = Scheduler(config, self.counters)
        self.metrics = MetricsWriter(config)
        self._frozen: str | None = None
        self._runner: web.AppRunner | None = None
        self._rng = random.Random()

    def app(self) -> web.Application:
        app = web.Application()
        r = app.router
        r.add_post("/v1/chat/completions", self._chat)
        r.add_post("/v1/completions", self._completions)
        r.add_get("/v1/models", self._models)
        r.add_get("/admin/stats", self._stats)
        r.add_post("/admin/faults", self._set_faults)
        r.add_post("/admin/reset", self._reset)
        health = HEALTH[self.config.mode]
        if health != "/v1/models":
            r.add_get(health, self._health)
        if self.config.mode == "sglang":
            r.add_get("/health_generate", self._health)
        if self.config.mode == "llamacpp":
            r.add_get("/slots", self._slots)
        if self.config.mode == "ollama":
            r.add_get("/api/version", self._health)
        if self.metrics.render(self.counters) is not None:
            r.add_get("/metrics", self._metrics)
        return app

    async def start(self) -> FakeEngine:
        self._runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await site.start()
        server = getattr(site, "_server", None)
        if self.port == 0 and server is not None and server.sockets:
            self.port = server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- admin and health ----------------------------------------------------------------

    async def _health(self, request: web.Request) -> web.Response:
        if not self.faults.healthy:
            return web.json_response({"status": "unavailable"}, status=503)
        if self.config.mode == "ollama":
            return web.Response(text="Ollama is running")
        if self.config.mode == "llamacpp":
            return web.json_response({"status": "ok"})
        return web.Response(status=200)

    async def _models(self, request: web.Request) -> web.Response:
        if not self.faults.healthy:
            return web.json_response({"error": "unavailable"}, status=503)
        model = {"id": self.config.model, "object": "model", "created": 0, "owned_by": "fake-engine"}
        return web.json_response({"object": "list", "data": [model]})

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response({"mode": self.config.mode, **asdict(self.counters), "faults": asdict(self.faults)})

    async def _set_faults(self, request: web.Request) -> web.Response:
        raw = await request.json()
        known = {f.name for f in fields(Faults)}
        unknown = set(raw) - known
        if unknown:
            return web.json_response({"error": f"unknown faults {sorted(unknown)}; known: {sorted(known)}"}, status=400)
        for name, value in raw.items():
            setattr(self.faults, name, type(getattr(self.faults, name))(value))
        if self.faults.metrics == "frozen" and self._frozen is None:
            self._frozen = self.metrics.render(self.counters)
        if self.faults.metrics != "frozen":
            self._frozen = None
        return web.json_response(asdict(self.faults))

    async def _reset(self, request: web.Request) -> web.Response:
        """An empty prefix cache and no faults (counters go on: read them as differences)."""
        self.cache = PrefixCache(self.config.cache_blocks)
        self.faults = Faults()
        self._frozen = None
        return web.json_response(asdict(self.faults))

    async def _metrics(self, request: web.Request) -> web.Response:
        if self.faults.metrics == "hang":
            await asyncio.sleep(3600)
        text = self._frozen if self._frozen is not None else self.metrics.render(self.counters)
        return web.Response(text=text or "", content_type="text/plain", charset="utf-8")

    async def _slots(self, request: web.Request) -> web.Response:
        busy, n_ctx = self.counters.running, self.config.kv_tokens // self.config.max_running
        return web.json_response(
            [{"id": i, "is_processing": i < busy, "n_ctx": n_ctx} for i in range(self.config.max_running)]
        )

    # -- completions ---------------------------------------------------------------------

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._complete(request, chat=True)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._complete(request, chat=False)

    async def _complete(self, request: web.Request, chat: bool) -> web.StreamResponse:
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"error": {"message": "the body is not JSON"}}, status=400)
        c, cfg, faults = self.counters, self.config, self.faults
        c.requests += 1
        if faults.error_rate and self._rng.random() < faults.error_rate:
            c.errors += 1
            return web.json_response({"error": {"message": "injected failure"}}, status=500)
        text = prompt_text(body)
        hashes = block_hashes(text, cfg.block_tokens * CHARS_PER_TOKEN)
        prompt_tokens = max(1, len(text) // CHARS_PER_TOKEN)
        max_tokens = int(body.get("max_tokens") or body.get("max_completion_tokens") or 16)
        try:
            async with self.scheduler.slot(prompt_tokens + max_tokens):
                return await self._serve(request, body, chat, hashes, prompt_tokens, max_tokens)
        except OverloadedError:
            return web.json_response(
                {"error": "server busy, please try again. maximum pending requests exceeded"}, status=503
            )

    async def _serve(
        self, request: web.Request, body: dict[str, Any], chat: bool, hashes: list[bytes], prompt: int, out: int
    ) -> web.StreamResponse:
        c, cfg, faults = self.counters, self.config, self.faults
        cached = min(prompt, self.cache.admit(hashes) * cfg.block_tokens)
        c.prompt_tokens += prompt
        c.cached_prompt_tokens += cached
        slow = faults.slow_factor
        await asyncio.sleep(slow * (cfg.base_ms + (prompt - cached) * cfg.prefill_ms_per_token) / 1000)
        if faults.hang_first_token:
            await asyncio.sleep(3600)
        reply = Reply(cfg.model, chat, prompt, cached)
        if not body.get("stream"):
            await asyncio.sleep(slow * out / cfg.tokens_per_second)
            c.generation_tokens += out
            c.completed += 1
            return web.json_response(reply.whole(out))
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        sent = 0
        step = max(1, cfg.tokens_per_event)
        while sent < out:
            n = min(step, out - sent)
            if 0 <= faults.reset_after_tokens <= sent:
                if request.transport is not None:
                    request.transport.abort()
                c.errors += 1
                return resp
            await resp.write(reply.chunk(n, last=sent + n >= out))
            sent += n
            c.generation_tokens += n
            if sent < out:
                await asyncio.sleep(slow * n / cfg.tokens_per_second)
        if body.get("stream_options", {}).get("include_usage"):
            await resp.write(reply.usage_chunk(out))
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        c.completed += 1
        return resp


@dataclass
class Reply:
    """The OpenAI-shaped answer to one request."""

    model: str
    chat: bool
    prompt_tokens: int
    cached_tokens: int
    id: str = field(default_factory=lambda: f"cmpl-{random.getrandbits(48):012x}")

    def usage(self, out: int) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": out,
            "total_tokens": self.prompt_tokens + out,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
        }

    def whole(self, out: int) -> dict[str, Any]:
        text = "tok " * out
        choice: dict[str, Any] = {"index": 0, "finish_reason": "length"}
        if self.chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        kind = "chat.completion" if self.chat else "text_completion"
        return {"id": self.id, "object": kind, "created": int(time.time()), "model": self.model,
                "choices": [choice], "usage": self.usage(out)}  # fmt: skip

    def chunk(self, n: int, last: bool) -> bytes:
        choice: dict[str, Any] = {"index": 0, "finish_reason": "length" if last else None}
        if self.chat:
            choice["delta"] = {"content": "tok " * n}
        else:
            choice["text"] = "tok " * n
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        data = {"id": self.id, "object": kind, "created": 0, "model": self.model, "choices": [choice]}
        return b"data: " + json.dumps(data).encode() + b"\n\n"

    def usage_chunk(self, out: int) -> bytes:
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        data = {
            "id": self.id,
            "object": kind,
            "created": 0,
            "model": self.model,
            "choices": [],
            "usage": self.usage(out),
        }
        return b"data: " + json.dumps(data).encode() + b"\n\n"


def config_from_args(argv: list[str] | None = None) -> tuple[EngineConfig, str, int]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    for f in fields(EngineConfig):
        flag = "--" + f.name.replace("_", "-")
        if isinstance(f.default, bool):
            p.add_argument(flag, action="store_true", default=f.default)
        elif f.name == "mode":
            p.add_argument(flag, choices=MODES, default=f.default)
        else:
            p.add_argument(flag, type=type(f.default), default=f.default)
    ns = p.parse_args(argv)
    cfg = EngineConfig(**{f.name: getattr(ns, f.name) for f in fields(EngineConfig)})
    return cfg, ns.host, ns.port


async def serve(config: EngineConfig, host: str, port: int, ready: Callable[[int], None] = lambda port: None) -> None:
    engine = await FakeEngine(config, host, port).start()
    ready(engine.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await engine.stop()


def main() -> None:
    config, host, port = config_from_args()
    # one line when listening, so a parent process knows the port (with --port 0)
    asyncio.run(serve(config, host, port, lambda p: print(f"listening on {host}:{p}", flush=True)))


if __name__ == "__main__":
    main()
