"""Affinity keys of requests: a prompt cut into blocks with chained hashes, or a session id.

The same prompt gives the same key in every process and on every machine (xxhash, never
Python's hash()), so gateway replicas and SDK processes route a prefix alike without
sharing any state.

    key = affinity_key(json.loads(body), headers.get("x-session-id"))
    target = pool.acquire(key=key)    # with strategy PrefixAffinity
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import xxhash

SESSION_HEADER = "x-session-id"
BLOCK_CHARS = 64  # about 16 tokens
PREFIX_BLOCKS = 8  # the key covers the first 8 blocks (about 128 tokens)


def prompt_text(body: Mapping[str, Any]) -> str:
    """The text an engine would prefill, in order: chat messages (role and content; content
    parts' text) or a completion's prompt."""
    if "messages" in body:
        parts = []
        for m in body.get("messages") or []:
            if not isinstance(m, Mapping):
                continue
            content = m.get("content")
            if isinstance(content, list):
                content = "".join(str(p.get("text", "")) for p in content if isinstance(p, Mapping))
            parts.append(f"<|{m.get('role', 'user')}|>{content or ''}")
        return "".join(parts)
    prompt = body.get("prompt", "")
    return "".join(str(p) for p in prompt) if isinstance(prompt, list) else str(prompt)


def block_hashes(text: str | bytes, block_chars: int = BLOCK_CHARS, limit: int | None = None) -> list[bytes]:
    """Chained 8-byte hashes of the full blocks of `text` (at most `limit` of them): block i's
    hash covers blocks 0..i, so equal hashes mean equal prefixes."""
    data = text.encode() if isinstance(text, str) else text
    count = len(data) // block_chars if limit is None else min(limit, len(data) // block_chars)
    out: list[bytes] = []
    prev = b""
    for i in range(count):
        prev = xxhash.xxh3_64_digest(prev + data[i * block_chars : (i + 1) * block_chars])
        out.append(prev)
    return out


def prefix_key(text: str, block_chars: int = BLOCK_CHARS, prefix_blocks: int = PREFIX_BLOCKS) -> str:
    """The key of a prompt: the chained hash of its first `prefix_blocks` blocks; a prompt
    shorter than one block is keyed by all of it."""
    hashes = block_hashes(text, block_chars, prefix_blocks)
    digest = hashes[-1] if hashes else xxhash.xxh3_64_digest(text.encode())
    return "p:" + digest.hex()


def affinity_key(
    body: Mapping[str, Any] | None,
    session: str | None = None,
    block_chars: int = BLOCK_CHARS,
    prefix_blocks: int = PREFIX_BLOCKS,
) -> str | None:
    """A session id when the request has one (`x-session-id`), else the prompt's prefix
    key; None for a request without a prompt."""
    if session:
        return "s:" + session
    if not body:
        return None
    text = prompt_text(body)
    return prefix_key(text, block_chars, prefix_blocks) if text else None
