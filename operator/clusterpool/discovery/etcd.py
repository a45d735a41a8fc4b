"""etcd discovery: endpoints registered as keys under a prefix, followed with a watch.

It talks to etcd's v3 JSON gateway (/v3/kv/range, /v3/watch, /v3/auth/authenticate) over
httpx; docs/etcd.md says why, with the measurements. The rules:

- each key under the prefix is one endpoint, named after the rest of the key; its value is
  JSON with `address` and `port`, optionally `weight` (1-1000), `tier` (0-9), `labels`
  (strings to strings) and `capacity`; a value that does not parse is left out and named in `invalid`;
- a full read (range) gives the members and the revision they are at; the watch starts at
  the next revision; a broken stream resumes after the last revision seen, without a read;
- when etcd has compacted its history past that revision (the watch is cancelled with
  compact_revision), or the revision went backwards (a new etcd), the watcher reads
  everything again and watches from the new revision;
- while etcd cannot be read the last membership stays, and the outage is reported.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import os
import ssl
import tempfile
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Annotated, Any

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from clusterpool.api import EtcdDiscovery, SecretKeyRef
from clusterpool.core.backoff import Backoff
from clusterpool.core.health import Endpoint
from clusterpool.core.labels import MAX_CAPACITY, valid_labels
from clusterpool.discovery.kubernetes import member_name

log = logging.getLogger(__name__)
STREAM_SECONDS = 60.0  # a watch stream is reopened (resuming) at least this often, so a silent hang is noticed


class Registration(BaseModel):
    """The JSON value of one key: where the endpoint listens. Unknown fields are ignored
    (registrars often add their own)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    address: str = Field(min_length=1, max_length=253)
    port: int = Field(ge=1, le=65535)
    weight: int = Field(default=1, ge=1, le=1000)
    tier: int = Field(default=0, ge=0, le=9)
    labels: dict[Annotated[str, Field(max_length=317)], Annotated[str, Field(max_length=63)]] = Field(
        default_factory=dict, max_length=32
    )
    capacity: int | None = Field(default=None, ge=1, le=MAX_CAPACITY)


def parse_registration(value: bytes) -> Registration:
    """Raises ValueError saying what is wrong with the value."""
    try:
        return Registration.model_validate_json(value)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'value'}: {e['msg']}" for e in exc.errors())
        raise ValueError(problems) from None


def members_from_registrations(prefix: str, registrations: Mapping[str, Registration]) -> tuple[Endpoint, ...]:
    """The members, named after the rest of each key (made a DNS label; a name two keys
    would share gets a hash of its key)."""
    members: dict[str, Endpoint] = {}
    for key in sorted(registrations):
        reg = registrations[key]
        name = member_name({}, key[len(prefix) :] or key)
        if name in members:
            name = member_name({}, f"{name[:54]}-{hashlib.sha256(key.encode()).hexdigest()[:8]}")
        labels, _ = valid_labels(reg.labels)  # a label that is not a Kubernetes label is left out, as from Consul
        members[name] = Endpoint(
            name, reg.address, reg.port, reg.weight, reg.tier, labels=labels, capacity=reg.capacity
        )
    return tuple(members[n] for n in sorted(members))


def range_end(prefix: bytes) -> bytes:
    """etcd's end of the range of keys starting with prefix."""
    end = bytearray(prefix)
    while end and end[-1] == 0xFF:
        end.pop()
    if not end:
        return b"\0"
    end[-1] += 1
    return bytes(end)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _unb64(text: str | None) -> bytes:
    return base64.b64decode(text or "")


OnChange = Callable[[tuple[Endpoint, ...]], None]
OnHealth = Callable[[str | None], None]  # None: reachable; else what failed
OnResync = Callable[[str], None]  # what made the watcher read everything again
ReadSecret = Callable[[SecretKeyRef], Awaitable[str | None]]


async def etcd_tls(spec: EtcdDiscovery, read_secret: ReadSecret) -> ssl.SSLContext | None:
    """With https endpoints: an SSL context that checks etcd's certificate against
    caSecretRef's bundle (else the system's CAs, or nothing with insecureSkipVerify) and
    presents certSecretRef/keySecretRef as the client certificate."""
    if not spec.endpoints[0].startswith("https://"):
        return None

    async def pem(ref: SecretKeyRef, field: str) -> str:
        value = await read_secret(ref)
        if not value:
            raise EtcdError(f"Secret {ref.name} (key {ref.key}) named by {field} cannot be read")
        return value

    ctx = ssl.create_default_context()
    if spec.insecure_skip_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif spec.ca_secret_ref is not None:
        ctx = ssl.create_default_context(cadata=await pem(spec.ca_secret_ref, "caSecretRef"))
    if spec.cert_secret_ref is not None and spec.key_secret_ref is not None:
        cert = await pem(spec.cert_secret_ref, "certSecretRef")
        key = await pem(spec.key_secret_ref, "keySecretRef")
        await asyncio.to_thread(_load_client_certificate, ctx, cert, key)
    return ctx


def _load_client_certificate(ctx: ssl.SSLContext, cert: str, key: str) -> None:
    with tempfile.TemporaryDirectory() as d:  # ssl loads a certificate chain from files only
        paths = os.path.join(d, "tls.crt"), os.path.join(d, "tls.key")
        for path, text in zip(paths, (cert, key), strict=True):
            with open(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
                f.write(text)
        try:
            ctx.load_cert_chain(*paths)
        except ssl.SSLError as exc:
            raise EtcdError(f"certSecretRef and keySecretRef do not hold a certificate and its key: {exc}") from None


class EtcdKeys:
    """The keys under the prefix, as read and watched: their registrations, the keys left
    out, the revision they are at, and the members last told to the pool."""

    def __init__(self, prefix: str, on_change: OnChange, on_resync: OnResync, on_watching: Callable[[], None]) -> None:
        """`on_watching`: called when etcd confirms a watch (etcd answers)."""
        self.prefix = prefix
        self.on_change = on_change
        self.on_resync = on_resync
        self.on_watching = on_watching
        self.registrations: dict[str, Registration] = {}
        self.invalid: dict[str, str] = {}  # key -> what is wrong with its value
        self._told_invalid: dict[str, str] = {}
        self.members: tuple[Endpoint, ...] | None = None
        self.revision: int | None = None  # every change up to here is known; None: read everything

    def apply(self, key: bytes, value: bytes | None) -> None:
        """One key's value (None: deleted)."""
        name = key.decode(errors="replace")
        self.registrations.pop(name, None)
        self.invalid.pop(name, None)
        if value is None:
            return
        try:
            self.registrations[name] = parse_registration(value)
        except ValueError as exc:
            self.invalid[name] = str(exc)[:200]
            log.warning("etcd key %s left out: %s", name, self.invalid[name])

    def replace_all(self, answer: Mapping[str, Any]) -> None:
        """Every key, from a range answer."""
        self.registrations, self.invalid = {}, {}
        for kv in answer.get("kvs") or []:
            self.apply(_unb64(kv.get("key")), _unb64(kv.get("value")))
        self.revision = int(answer["header"]["revision"])
        self.publish()

    def publish(self) -> None:
        """Tell the pool when the members (or the keys left out) changed."""
        members = members_from_registrations(self.prefix, self.registrations)
        if members != self.members or self.invalid != self._told_invalid:
            self.members, self._told_invalid = members, dict(self.invalid)
            self.on_change(members)

    def follow(self, message: Mapping[str, Any]) -> bool:
        """Fold one watch message in; False when the watch is over (read everything again)."""
        if "error" in message:
            raise EtcdError(f"the watch failed: {message['error'].get('message', message['error'])}")
        result = message.get("result") or {}
        header_revision = int((result.get("header") or {}).get("revision", 0))
        compacted = int(result.get("compact_revision") or 0)
        if compacted:
            self._resync(
                f"etcd compacted its history to revision {compacted}, past revision {self.revision} where the "
                "watch would resume; reading every key again"
            )
            return False
        if result.get("canceled"):
            raise EtcdError(f"etcd cancelled the watch: {result.get('cancel_reason') or 'no reason given'}")
        if result.get("created"):
            if self.revision is not None and header_revision < self.revision:
                self._resync(
                    f"etcd's revision went back from {self.revision} to {header_revision}; reading every key again"
                )
                return False
            self.on_watching()
            return True
        events = result.get("events") or []
        for ev in events:
            kv = ev.get("kv") or {}
            self.apply(_unb64(kv.get("key")), None if ev.get("type") == "DELETE" else _unb64(kv.get("value")))
            self.revision = max(self.revision or 0, int(kv.get("mod_revision") or 0))
        if not events and header_revision:  # a progress notification: nothing is missing up to here
            self.revision = max(self.revision or 0, header_revision)
        self.publish()
        return True

    def _resync(self, why: str) -> None:
        log.info(why)
        self.revision = None
        self.on_resync(why)


class EtcdConnection:
    """Which of etcd's endpoints to talk to, with its auth token; after a failure the next
    endpoint at once, and once none answers, an outage reported and a backoff."""

    def __init__(self, spec: EtcdDiscovery, read_secret: ReadSecret, on_health: OnHealth, max_backoff: float) -> None:
        self.spec = spec
        self.read_secret = read_secret
        self.on_health = on_health
        self._endpoint = 0  # the endpoint in use (modulo their number)
        self._failures = 0  # in a row, over all endpoints
        self._backoff = Backoff(0.5, max_backoff)
        self._token: str | None = None  # etcd's auth token, kept while it works (asking costs etcd a bcrypt)

    @property
    def base(self) -> str:
        """The endpoint in use."""
        return self.spec.endpoints[self._endpoint % len(self.spec.endpoints)]

    async def open(self) -> httpx.AsyncClient:
        """A client of the endpoint in use."""
        timeout = httpx.Timeout(10.0, read=None)  # a watch is quiet while nothing changes
        tls = await etcd_tls(self.spec, self.read_secret)
        return httpx.AsyncClient(base_url=self.base, verify=tls or True, timeout=timeout)

    async def headers(self, http: httpx.AsyncClient) -> dict[str, str]:
        """The auth token when a user is set: asked for once, again after a failure."""
        if self.spec.username is None or self.spec.password_secret_ref is None:
            return {}
        if self._token is None:
            ref = self.spec.password_secret_ref
            password = await self.read_secret(ref)
            if password is None:
                raise EtcdError(f"Secret {ref.name} (key {ref.key}) named by passwordSecretRef cannot be read")
            body = await _call(http, "/v3/auth/authenticate", {"name": self.spec.username, "password": password})
            self._token = str(body.get("token", ""))
        return {"Authorization": self._token}

    def problem(self, exc: BaseException) -> str:
        """What went wrong, for the condition. etcd with --client-cert-auth refuses a
        client without a certificate after the TLS 1.3 handshake: the client sees either
        the connection closed or the alert "certificate required", whichever comes first."""
        text = str(exc).strip()
        base = self.base
        hint = ""
        no_cert = base.startswith("https://") and self.spec.cert_secret_ref is None
        if no_cert and (not text or "CERTIFICATE_REQUIRED" in text):
            hint = " (if etcd runs with --client-cert-auth, set certSecretRef and keySecretRef)"
        if text:
            return f"{type(exc).__name__}: {text}{hint}"
        return f"{type(exc).__name__}: {base} closed the connection{hint}"

    def reachable(self) -> None:
        self._failures = 0
        self._backoff.reset()
        self.on_health(None)

    def failed(self, exc: BaseException) -> float | None:
        """Move on to the next endpoint after exc: None to try it at once, else (none of
        them answered: the outage is reported) the seconds to wait first."""
        self._token = None  # expired, or etcd restarted: the next connection asks again
        problem = self.problem(exc)[:300]
        self._endpoint += 1
        self._failures += 1
        if self._failures % len(self.spec.endpoints):
            return None  # the next endpoint at once; an outage is when none answers
        self.on_health(problem)
        return self._backoff.next()


class EtcdWatcher:
    """Follows the keys under spec.prefix (EtcdKeys) over a connection to etcd (EtcdConnection)."""

    def __init__(
        self,
        spec: EtcdDiscovery,
        read_secret: ReadSecret,
        on_change: OnChange,
        on_health: OnHealth,
        on_resync: OnResync = lambda why: None,
        max_backoff: float = 30.0,
    ) -> None:
        self.spec = spec
        self.connection = EtcdConnection(spec, read_secret, on_health, max_backoff)
        self.keys = EtcdKeys(spec.prefix, on_change, on_resync, self.connection.reachable)
        self._task: asyncio.Task[None] | None = None

    @property
    def invalid(self) -> Mapping[str, str]:
        """The keys left out, each with what is wrong with its value."""
        return self.keys.invalid

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"etcd-watch-{self.spec.prefix}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def _read_all(self, http: httpx.AsyncClient, headers: dict[str, str]) -> None:
        prefix = self.spec.prefix.encode()
        body = await _call(http, "/v3/kv/range", {"key": _b64(prefix), "range_end": _b64(range_end(prefix))}, headers)
        self.keys.replace_all(body)

    async def _watch(self, http: httpx.AsyncClient, headers: dict[str, str]) -> None:
        """Follow the changes after the keys' revision until the stream ends or is cancelled."""
        assert self.keys.revision is not None
        prefix = self.spec.prefix.encode()
        create = {
            "key": _b64(prefix),
            "range_end": _b64(range_end(prefix)),
            "start_revision": str(self.keys.revision + 1),
            "progress_notify": True,
        }
        async with asyncio.timeout(STREAM_SECONDS):
            async with http.stream("POST", "/v3/watch", json={"create_request": create}, headers=headers) as r:
                if r.status_code != 200:
                    await r.aread()
                    raise EtcdError(_answer(r))
                async for line in r.aiter_lines():
                    if line.strip() and not self.keys.follow(json.loads(line)):
                        return
        raise EtcdError("etcd ended the watch stream")

    async def _run(self) -> None:
        http: httpx.AsyncClient | None = None
        try:
            while True:
                try:
                    if http is None:
                        http = await self.connection.open()
                    headers = await self.connection.headers(http)
                    if self.keys.revision is None:
                        await self._read_all(http, headers)
                        self.connection.reachable()
                    await self._watch(http, headers)
                except asyncio.CancelledError:
                    raise
                except TimeoutError:
                    continue  # the stream's time is up: reopen it, resuming
                except (httpx.HTTPError, EtcdError, ValueError, KeyError, ssl.SSLError, OSError) as exc:
                    if http is not None:
                        await http.aclose()
                        http = None
                    pause = self.connection.failed(exc)
                    if pause is not None:
                        await asyncio.sleep(pause)
        finally:
            if http is not None:
                await http.aclose()


async def _call(
    http: httpx.AsyncClient, path: str, body: Mapping[str, Any], headers: Mapping[str, str] | None = None
) -> dict[str, Any]:
    r = await http.post(path, json=body, headers=headers)
    if r.status_code != 200:
        raise EtcdError(_answer(r))
    answer: dict[str, Any] = r.json()
    return answer


def _answer(r: httpx.Response) -> str:
    try:
        message = str(r.json().get("message") or r.text)
    except ValueError:
        message = r.text
    return f"etcd answered {r.status_code} to {r.request.url.path}: {message.strip()[:200]}"


def invalid_keys(invalid: Mapping[str, str]) -> Iterable[str]:
    return (f"{k} ({why})" for k, why in sorted(invalid.items()))


class EtcdError(Exception):
    pass
