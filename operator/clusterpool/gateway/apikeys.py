"""Optional API keys from a Secret, each with the pools it may reach.

Secret data: one entry per key. The entry's name is the key itself, or `sha256.<hex>` of it
(so `kubectl describe secret` shows no usable key); its value is the pools the key may use,
`namespace/pool,namespace/pool`, or `*` for all. Clients send the key as
`Authorization: Bearer <key>` (what OpenAI clients send) or `X-API-Key: <key>`. Keys are
compared in constant time against every entry and never logged.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
from collections.abc import Mapping

log = logging.getLogger(__name__)
ALL = "*"
_HASHED = re.compile(r"sha256\.([0-9a-f]{64})")


class KeyEntryError(ValueError):
    """A Secret entry the gateway cannot use (named by its position, never by the key)."""


Allowed = frozenset[tuple[str, str]] | str  # pools, or ALL


def _allowed(value: str, where: str) -> Allowed:
    value = value.strip()
    if value == ALL:
        return ALL
    pools = set()
    for item in value.split(","):
        ns, sep, name = item.strip().partition("/")
        if not sep or not ns or not name:
            raise KeyEntryError(f"{where}: {item.strip()!r} is not namespace/pool; write `ns/pool,ns/pool` or `*`")
        pools.add((ns, name))
    return frozenset(pools)


class ApiKeys:
    def __init__(self, secret: str) -> None:
        self.secret = secret  # namespace/name, for messages
        self._plain: list[tuple[bytes, Allowed]] = []
        self._hashed: list[tuple[bytes, Allowed]] = []
        self.loaded = False

    def load(self, data: Mapping[str, str]) -> None:
        """The Secret's `data` (base64 values, as the API returns them). A bad entry is
        skipped and logged by its position; the others still work."""
        plain, hashed = [], []
        for i, (name, raw) in enumerate(sorted(data.items())):
            where = f"Secret {self.secret}, entry #{i + 1}"
            try:
                allowed = _allowed(base64.b64decode(raw).decode(), where)
            except (ValueError, UnicodeDecodeError) as exc:
                log.warning("API keys: skipping %s: %s", where, exc)
                continue
            m = _HASHED.fullmatch(name)
            if m:
                hashed.append((bytes.fromhex(m.group(1)), allowed))
            else:
                plain.append((name.encode(), allowed))
        self._plain, self._hashed, self.loaded = plain, hashed, True
        log.info("API keys: %d loaded from Secret %s", len(plain) + len(hashed), self.secret)

    def clear(self) -> None:
        self._plain, self._hashed = [], []

    def check(self, presented: bytes | None) -> Allowed | None:
        """What the key may reach; None for a missing or unknown key. Every entry is
        compared, matching or not, so the time taken does not tell how close a guess was."""
        if not presented:
            return None
        found: Allowed | None = None
        for key, allowed in self._plain:
            if hmac.compare_digest(key, presented) and found is None:
                found = allowed
        if self._hashed:
            digest = hashlib.sha256(presented).digest()
            for key, allowed in self._hashed:
                if hmac.compare_digest(key, digest) and found is None:
                    found = allowed
        return found


def presented_key(authorization: bytes | None, x_api_key: bytes | None) -> bytes | None:
    if authorization is not None:
        scheme, _, token = authorization.partition(b" ")
        if scheme.lower() == b"bearer":
            return token.strip() or None
    return x_api_key.strip() if x_api_key else None


def allows(allowed: Allowed, namespace: str, pool: str) -> bool:
    return allowed == ALL or (namespace, pool) in allowed
