"""One request through the gateway: authenticate, find the pool, pick an endpoint with the
SDK's PoolClient, forward, and retry on another endpoint until the first response byte.

Retry rule: before the response head has gone to the client, a failed connect is always
moved to another endpoint; a reset, a timeout or a 502/503/504 (and a 429) is moved when the
request is safe to resend then: an idempotent method, or a POST to an inference path (no
output has started, so nothing was consumed). Never to an endpoint already tried, within
the pool's retry count and RetryBudget. After the head is sent nothing is retried: a broken
upstream stream aborts the client's connection, so the client sees an incomplete response.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from time import monotonic
from typing import Protocol

from clusterpool.balancer import NoEndpointError, Target
from clusterpool.balancer.prefix import SESSION_HEADER, affinity_key
from clusterpool.client.load import LoadScraper
from clusterpool.client.outlier import ERROR_5XX, GATEWAY_FAILURE, SUCCESS
from clusterpool.client.pool import CapacityError
from clusterpool.core.labels import as_selector
from clusterpool.engines import find_profile
from clusterpool.gateway.accesslog import AccessLog
from clusterpool.gateway.apikeys import Allowed, ApiKeys, allows, presented_key
from clusterpool.gateway.hedging import Outgoing, Race
from clusterpool.gateway.http1 import (
    HOP_BY_HOP,
    LAST_CHUNK,
    Request,
    chunk,
    connection_tokens,
    model_of,
    response_head,
    status_line,
)
from clusterpool.gateway.metrics import GatewayMetrics
from clusterpool.gateway.routes import RETRY_STATUSES, PoolRoute, Routes
from clusterpool.gateway.settings import Settings
from clusterpool.gateway.upstream import EndpointPool, Head, UpstreamConnection, UpstreamError, Upstreams

IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE"})
INFERENCE_PATHS = frozenset({b"/v1/chat/completions", b"/v1/completions", b"/v1/embeddings", b"/v1/responses"})
GATEWAY_STATUSES = frozenset({502, 503, 504})
DROP_REQUEST = HOP_BY_HOP | {
    b"host",
    b"content-length",
    b"expect",
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-clusterpool-key",
    b"x-clusterpool-selector",
}
DROP_RESPONSE = HOP_BY_HOP | {b"content-length", b"x-clusterpool-endpoint"}
ENDPOINT_HEADER = b"X-ClusterPool-Endpoint"
CLIENT_CLOSED = 499  # the status access logs give a request whose client went away first
SESSION = SESSION_HEADER.encode()
TIMEOUT_REASONS = frozenset({"first_byte_timeout", "idle_timeout", "request_timeout", "connect_timeout"})


class ClientSide(Protocol):
    """What the proxy needs of a client connection (server.ClientConnection)."""

    peer: str
    upstream: UpstreamConnection | None

    def write(self, data: bytes) -> None: ...
    def abort(self) -> None: ...


def openai_error(status: int, message: str, type_: str, code: str | None = None) -> bytes:
    return json.dumps({"error": {"message": message, "type": type_, "param": None, "code": code}}).encode()


def _retry_after(head: Head) -> float | None:
    value = head.header(b"retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return 1.0  # an HTTP date: back off a little; the next answer tells more


def request_affinity(req: Request) -> str | None:
    """The PrefixAffinity key of a request: its x-session-id, else its prompt's prefix; None
    for a body that is not a JSON object with a prompt."""
    session = req.first.get(SESSION)
    if session:
        return affinity_key(None, session.decode("latin-1"))
    try:
        doc = json.loads(req.body)
    except (ValueError, RecursionError):
        return None
    return affinity_key(doc) if isinstance(doc, dict) else None


def report_busy(load: LoadScraper, route: PoolRoute, target: Target, head: Head) -> None:
    """An engine whose profile says this status means its queue is full (Ollama's 503)
    counts as saturated for the strategies for a while."""
    profile = find_profile(route.table.engine)
    if profile is not None and head.status == profile.busy_status:
        load.report_busy(target.address, target.port, _retry_after(head) or 1.0)


def _chunked(write: Callable[[bytes], None]) -> Callable[[bytes], None]:
    def send(data: bytes) -> None:
        if data:  # an empty chunk would end the body
            write(chunk(data))

    return send


class Outcome:
    """What the access log and the metrics say about one request."""

    __slots__ = ("attempts", "endpoint", "reason", "route", "status", "ttfb")

    def __init__(self) -> None:
        self.status = 0
        self.route: PoolRoute | None = None
        self.endpoint = ""
        self.attempts = 0
        self.ttfb: float | None = None
        self.reason = ""


class Proxy:
    def __init__(
        self,
        settings: Settings,
        routes: Routes,
        upstreams: Upstreams,
        metrics: GatewayMetrics,
        keys: ApiKeys | None,
        access_log: AccessLog | None,
    ) -> None:
        self.settings = settings
        self.routes = routes
        self.upstreams = upstreams
        self.metrics = metrics
        self.keys = keys
        self.access_log = access_log
        self.loop = asyncio.get_running_loop()
        self.draining = False
        # the gateway's key is not the backend's
        self._drop_request = DROP_REQUEST | {b"authorization", b"x-api-key"} if keys is not None else DROP_REQUEST

    # -- answers the gateway makes itself -----------------------------------------------------

    def _answer(
        self,
        client: ClientSide,
        out: Outcome,
        status: int,
        body: bytes,
        keep_alive: bool,
        extra: tuple[bytes, ...] = (),
    ) -> bool:
        headers = [(b"Content-Type", b"application/json"), (b"Content-Length", str(len(body)).encode())]
        headers.extend((h.split(b": ", 1)[0], h.split(b": ", 1)[1]) for h in extra)
        if not keep_alive:
            headers.append((b"Connection", b"close"))
        client.write(response_head(status, headers) + body)
        out.status = status
        return keep_alive

    def _refuse(
        self, client: ClientSide, out: Outcome, status: int, reason: str, message: str, type_: str, keep: bool
    ) -> bool:
        self.metrics.reject(reason)
        out.reason = reason
        code = "model_not_found" if reason == "unknown_model" else reason
        return self._answer(client, out, status, openai_error(status, message, type_, code), keep)

    # -- one request --------------------------------------------------------------------------

    async def handle(self, client: ClientSide, req: Request) -> bool:
        """Answer one request; whether the connection may carry another."""
        start = monotonic()
        out = Outcome()
        keep = req.keep_alive and not self.draining
        try:
            return await self._route(client, req, out, keep, start)
        except asyncio.CancelledError:
            out.status, out.reason = CLIENT_CLOSED, "client_closed"  # the client left before its answer ended
            raise
        finally:
            end = monotonic()
            route = out.route
            if route is not None:
                self.metrics.answered(route.namespace, route.name, out.endpoint, out.status, out.ttfb, end - start)
            if self.access_log is not None:
                self.access_log.write(req, client.peer, out, start, end, self.settings.log_bodies)

    async def _route(self, client: ClientSide, req: Request, out: Outcome, keep: bool, start: float) -> bool:
        allowed = None
        if self.keys is not None:
            allowed = self.keys.check(presented_key(req.header(b"authorization"), req.header(b"x-api-key")))
            if allowed is None:
                return self._refuse(
                    client, out, 401, "unauthorized", "a valid API key is required", "invalid_request_error", keep
                )
        target = req.target
        route: PoolRoute | None = None
        path = target
        if target.startswith(b"/pools/"):
            found = self.routes.by_prefix(target)
            if found is None:
                return self._refuse(
                    client, out, 404, "unknown_pool", "no such pool: /pools/<namespace>/<pool>/ names a pool this "
                    "gateway serves", "invalid_request_error", keep,
                )  # fmt: skip
            route, path = found
        else:
            route = self.routes.by_host(req.header(b"host"))
        if route is None:
            if req.method == b"GET" and target.split(b"?", 1)[0] == b"/v1/models":
                return self._models(client, out, keep, allowed)
            model = model_of(req.body) if req.body else None
            if model is None:
                return self._refuse(
                    client, out, 404, "no_route", "no pool for this request: send a JSON body with `model`, the Host "
                    "<pool>.<namespace>, or the path prefix /pools/<namespace>/<pool>/", "invalid_request_error", keep,
                )  # fmt: skip
            route = self.routes.models.get(model)
            if route is None or (allowed is not None and not allows(allowed, route.namespace, route.name)):
                served = ", ".join(self._visible_models(allowed)) or "none"
                return self._refuse(
                    client, out, 404, "unknown_model", f"The model `{model}` does not exist; this gateway serves: "
                    f"{served}", "invalid_request_error", keep,
                )  # fmt: skip
        if allowed is not None and not allows(allowed, route.namespace, route.name):
            return self._refuse(
                client, out, 403, "forbidden", f"this API key may not use pool {route.namespace}/{route.name}",
                "invalid_request_error", keep,
            )  # fmt: skip
        out.route = route
        if route.in_flight >= self.settings.limits.max_in_flight_per_pool:
            self.metrics.reject("pool_in_flight")
            out.reason = "pool_in_flight"
            body = openai_error(503, f"pool {route.namespace}/{route.name} is at its in-flight limit", "overloaded")
            return self._answer(client, out, 503, body, keep, (b"Retry-After: 1",))
        route.in_flight += 1
        try:
            return await self._forward(client, req, route, path, out, keep, start)
        finally:
            route.in_flight -= 1

    def _visible(self, allowed: Allowed | None) -> list[tuple[str, PoolRoute]]:
        """The models (and their pools) a caller may use, by name."""
        return [
            (m, r)
            for m, r in sorted(self.routes.models.items())
            if allowed is None or allows(allowed, r.namespace, r.name)
        ]

    def _visible_models(self, allowed: Allowed | None) -> list[str]:
        return [m for m, _ in self._visible(allowed)]

    def _models(self, client: ClientSide, out: Outcome, keep: bool, allowed: Allowed | None) -> bool:
        data = [
            {"id": m, "object": "model", "created": 0, "owned_by": f"{r.namespace}/{r.name}"}
            for m, r in self._visible(allowed)
        ]
        return self._answer(client, out, 200, json.dumps({"object": "list", "data": data}).encode(), keep)

    # -- forwarding ---------------------------------------------------------------------------

    def _upstream_head(self, req: Request, peer: str) -> bytes:
        """Everything of the request head after the request line and Host."""
        first = req.first
        drop = self._drop_request
        if b"connection" in first:
            drop = drop | connection_tokens(req.headers)
        lines = [b"%s: %s\r\n" % nv for nv, n in zip(req.headers, req.names, strict=True) if n not in drop]
        xff = first.get(b"x-forwarded-for")
        ip = peer.encode()
        lines.append(b"X-Forwarded-For: %s\r\nX-Forwarded-Proto: http\r\n" % (xff + b", " + ip if xff else ip))
        if req.body or req.method in (b"POST", b"PUT", b"PATCH"):
            lines.append(b"Content-Length: %d\r\n" % len(req.body))
        lines.append(b"\r\n")
        return b"".join(lines)

    async def _forward(
        self, client: ClientSide, req: Request, route: PoolRoute, path: bytes, out: Outcome, keep: bool, start: float
    ) -> bool:
        pool = route.client
        pool.budget.deposit()
        bare_path = path.split(b"?", 1)[0] if path.find(b"?") >= 0 else path  # find: cheaper than `in` on bytes
        resend_ok = req.method in IDEMPOTENT or bare_path in INFERENCE_PATHS
        first = req.first
        raw_key = first.get(b"x-clusterpool-key")
        if raw_key is not None:
            key: str | None = raw_key.decode("latin-1")
        else:
            key = request_affinity(req) if pool.strategy == "PrefixAffinity" else None
        raw_selector = first.get(b"x-clusterpool-selector")
        selector = None
        if raw_selector is not None:
            try:
                selector = as_selector(raw_selector.decode("latin-1"))
            except ValueError as exc:
                return self._refuse(client, out, 400, "bad_request", str(exc), "invalid_request_error", keep)
        rest = self._upstream_head(req, client.peer) + req.body
        request_line = b"%s %s HTTP/1.1\r\nHost: " % (req.method, path)
        head_only = req.method == b"HEAD"
        limit = self.settings.timeouts.request
        request_by = start + limit if limit > 0 else 0.0
        tried: set[str] = set()
        retries = 0
        stale_retry_used = False
        last_error: UpstreamError | None = None
        policy = route.table.hedging
        if policy is not None and resend_ok:
            race = Race(self, route, policy, (key, selector), Outgoing(request_line, rest, request_by, head_only), out)
            return await race.answer(client, req, keep, start)
        while True:
            try:
                target = route.acquire(key, tried, selector)
            except CapacityError:
                return self._at_capacity(client, out, keep, route)
            except NoEndpointError as exc:
                return self._no_endpoint(client, out, keep, route, last_error, exc)
            tried.add(target.name)
            out.attempts += 1
            t0 = monotonic()
            endpoint = self.upstreams.pool(target.address, target.port)
            upstream: UpstreamConnection | None = None
            try:
                upstream = endpoint.take_idle() or await endpoint.connect()
                head_f = upstream.send(request_line + endpoint.host + rest, request_by, head_only)
                client.upstream = upstream
                head = await head_f
            except UpstreamError as exc:
                stale = upstream is not None and upstream.reused and exc.reason == "reset" and not upstream.received
                pool.finished(target, monotonic() - t0, stale)
                if stale and not stale_retry_used:  # a kept-alive connection the endpoint had closed: not its fault
                    stale_retry_used = True
                    tried.discard(target.name)
                    continue
                self._record(route, target, GATEWAY_FAILURE)
                last_error = exc
                if self._may_retry(
                    route, resend_ok or exc.reason in ("connect", "connect_timeout"), tried, selector, retries
                ):
                    retries += 1
                    self.metrics.retried(route.namespace, route.name, exc.reason)
                    continue
                return self._upstream_failed(client, out, keep, target, exc)
            except BaseException:
                if upstream is not None:
                    upstream.close()
                pool.finished(target, monotonic() - t0, True)  # the client went away: not the endpoint's fault
                raise
            status = head.status
            if status == 200:  # the common answer: relayed, nothing to decide
                return await self._relay(client, req, route, target, endpoint, upstream, head, out, keep, start, t0)
            overloaded = self._note_status(route, target, head)
            if status in RETRY_STATUSES and resend_ok and self._may_retry(route, True, tried, selector, retries):
                retries += 1
                upstream.close()
                pool.finished(target, monotonic() - t0, overloaded)
                if not overloaded:
                    self._record(route, target, GATEWAY_FAILURE)
                self.metrics.retried(route.namespace, route.name, "overloaded" if overloaded else f"status_{status}")
                continue
            return await self._relay(client, req, route, target, endpoint, upstream, head, out, keep, start, t0)

    def _note_status(self, route: PoolRoute, target: Target, head: Head) -> bool:
        """What an answer other than 200 tells of the endpoint (busy, backing off); whether
        it says overloaded (a 429, a 503 with Retry-After): not a failure of the endpoint."""
        status = head.status
        overloaded = status == 429 or (status == 503 and head.header(b"retry-after") is not None)
        if route.client.load is not None:
            report_busy(route.client.load, route, target, head)
        if overloaded:
            route.outliers.back_off(target.name, _retry_after(head) or 1.0)
        return overloaded

    def _at_capacity(self, client: ClientSide, out: Outcome, keep: bool, route: PoolRoute) -> bool:
        body = openai_error(503, f"every endpoint of {route.namespace}/{route.name} is at capacity", "overloaded")
        return self._answer(client, out, 503, body, keep, (b"Retry-After: 1",))

    def _may_retry(self, route: PoolRoute, allowed: bool, tried: set[str], selector: object, retries: int) -> bool:
        pool = route.client
        if not allowed or retries >= pool.retries:
            return False
        if len(tried) >= pool.matching(selector):  # type: ignore[arg-type]
            return False
        return pool.budget.withdraw()

    def _record(self, route: PoolRoute, target: Target, outcome: int) -> None:
        for name in route.outliers.record(target.name, outcome):
            self.metrics.ejected(route.namespace, route.name, name)

    def _no_endpoint(
        self,
        client: ClientSide,
        out: Outcome,
        keep: bool,
        route: PoolRoute,
        last: UpstreamError | None,
        exc: NoEndpointError,
    ) -> bool:
        if last is not None:
            status = 504 if last.reason in TIMEOUT_REASONS else 502
            out.reason = last.reason
            return self._answer(client, out, status, openai_error(status, str(last), "upstream_error"), keep)
        out.reason = "no_endpoint"
        body = openai_error(503, f"pool {route.namespace}/{route.name}: {exc}", "service_unavailable")
        return self._answer(client, out, 503, body, keep, (b"Retry-After: 1",))

    def _upstream_failed(
        self, client: ClientSide, out: Outcome, keep: bool, target: Target, exc: UpstreamError
    ) -> bool:
        status = 504 if exc.reason in TIMEOUT_REASONS else 502
        out.endpoint, out.reason = target.name, exc.reason
        return self._answer(
            client, out, status, openai_error(status, f"endpoint {target.name}: {exc}", "upstream_error"), keep
        )

    async def _relay(
        self,
        client: ClientSide,
        req: Request,
        route: PoolRoute,
        target: Target,
        endpoint: EndpointPool,
        upstream: UpstreamConnection,
        head: Head,
        out: Outcome,
        keep: bool,
        start: float,
        t0: float,
    ) -> bool:
        """Commit to this answer: send its head, then relay its body as it arrives."""
        status = head.status
        first = head.first
        drop = DROP_RESPONSE | connection_tokens(head.headers) if b"connection" in first else DROP_RESPONSE
        lines = [status_line(status)]
        lines.extend(b"%s: %s\r\n" % nv for nv, n in zip(head.headers, head.names, strict=True) if n not in drop)
        length = first.get(b"content-length")
        chunked = False
        if req.method == b"HEAD" or status in (204, 304):
            if length is not None:
                lines.append(b"Content-Length: %s\r\n" % length)
        elif length is not None and b"transfer-encoding" not in first:
            lines.append(b"Content-Length: %s\r\n" % length)
        elif req.version == "1.1":
            lines.append(b"Transfer-Encoding: chunked\r\n")
            chunked = True
        else:
            keep = False  # an HTTP/1.0 client: the end of the body is the end of the connection
        lines.append(b"%s: %s\r\n" % (ENDPOINT_HEADER, target.name.encode()))
        lines.append(b"\r\n" if keep else b"Connection: close\r\n\r\n")
        write = client.write
        early = upstream.relay(_chunked(write) if chunked else write)
        if early:
            lines.extend([chunk(b) for b in early if b] if chunked else early)
        write(b"".join(lines))  # head and what came with it: one write
        out.status, out.endpoint = status, target.name
        out.ttfb = monotonic() - start
        if status == 429 or (status == 503 and b"retry-after" in first):
            pass  # overloaded, backed off already: not a failure of the endpoint
        elif status >= 500:
            self._record(route, target, GATEWAY_FAILURE if status in GATEWAY_STATUSES else ERROR_5XX)
        else:
            self._record(route, target, SUCCESS)
        try:
            end = upstream.end()
            if end is not None:
                await end
        except UpstreamError as exc:
            out.reason = f"after_first_byte_{exc.reason}"
            self._record(route, target, GATEWAY_FAILURE)
            route.client.finished(target, monotonic() - t0, False)
            client.abort()  # the client sees an incomplete response, as it should
            return False
        except BaseException:
            upstream.close()
            route.client.finished(target, monotonic() - t0, True)
            raise
        finally:
            client.upstream = None
        if chunked:
            write(LAST_CHUNK)
        endpoint.release(upstream, head.keep_alive and req.method != b"HEAD")
        route.client.finished(target, monotonic() - t0, status < 500)
        return keep
