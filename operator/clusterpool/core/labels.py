"""Endpoint labels and capacity: the rules (Kubernetes label syntax), shared by the API
models, the discovery sources and the SDK's selectors.

Labels are kept as a sorted tuple of (key, value) pairs, so an Endpoint or a Target stays
hashable and two equal label sets compare equal whatever order they came in.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

Labels = tuple[tuple[str, str], ...]

MAX_LABELS = 16  # per endpoint
MAX_CAPACITY = 1_000_000
KEY_MAX = 317  # a 253-character prefix, "/", a 63-character name

# A Kubernetes label key: an optional DNS-subdomain prefix and "/", then a name of at most
# 63 characters (alphanumerics, "-", "_", "." inside). A value: empty or such a name.
_PREFIX = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
LABEL_KEY = rf"^({_PREFIX}/)?{_NAME}$"
LABEL_VALUE = rf"^({_NAME})?$"
_KEY_RE = re.compile(LABEL_KEY)
_VALUE_RE = re.compile(LABEL_VALUE)
KEY_RULE = (
    "a label key is an optional DNS-subdomain prefix of at most 253 characters and `/`, then a name of at "
    "most 63 characters: alphanumerics, with `-`, `_` or `.` inside (e.g. `model` or `example.com/zone`)"
)
VALUE_RULE = "a label value is empty, or at most 63 characters: alphanumerics, with `-`, `_` or `.` inside"


def key_error(key: str) -> str | None:
    if len(key) > KEY_MAX or not _KEY_RE.match(key) or key.find("/") > 253:
        return f"{KEY_RULE} (got {key[:80]!r})"
    return None


def value_error(value: str) -> str | None:
    if len(value) > 63 or not _VALUE_RE.match(value):
        return f"{VALUE_RULE} (got {value[:80]!r})"
    return None


def label_errors(labels: Mapping[str, str]) -> list[str]:
    """What is wrong with these labels, one line per problem (empty when they are valid)."""
    out = [e for k in labels if (e := key_error(k)) is not None]
    out += [f"label {k}: {e}" for k, v in labels.items() if (e := value_error(v)) is not None]
    if len(labels) > MAX_LABELS:
        out.append(f"at most {MAX_LABELS} labels per endpoint (got {len(labels)})")
    return out


def as_labels(pairs: Mapping[str, str] | Iterable[tuple[str, str]]) -> Labels:
    items = pairs.items() if isinstance(pairs, Mapping) else pairs
    return tuple(sorted(items))


def valid_labels(pairs: Mapping[str, str] | Iterable[tuple[str, str]]) -> tuple[Labels, list[str]]:
    """The valid labels among what a discovery source reports (at most MAX_LABELS, by key
    order), and the keys left out. A source's metadata is not ours to refuse; an invalid
    entry is dropped, not the endpoint."""
    kept: list[tuple[str, str]] = []
    dropped: list[str] = []
    for k, v in as_labels(pairs):
        if key_error(k) is None and value_error(v) is None and len(kept) < MAX_LABELS:
            kept.append((k, v))
        else:
            dropped.append(k)
    return tuple(kept), dropped


def parse_capacity(raw: object) -> int | None:
    """A capacity from a source's metadata (a string or a number): an integer from 1 to
    MAX_CAPACITY, else None (no limit)."""
    try:
        n = int(str(raw).strip())
    except ValueError:
        return None
    return n if 1 <= n <= MAX_CAPACITY else None


Selector = frozenset[tuple[str, str]]


def as_selector(selector: Mapping[str, str] | str | Selector | None) -> Selector:
    """A selector from a mapping, or from text `model=llama-3,zone=a` (the SDK's header)."""
    if selector is None:
        return frozenset()
    if isinstance(selector, frozenset):
        return selector
    if isinstance(selector, str):
        pairs = []
        for part in selector.split(","):
            if not part.strip():
                continue
            key, sep, value = part.partition("=")
            if not sep or not key.strip():
                raise ValueError(f"a label selector is `key=value[,key=value...]` (got {selector!r})")
            pairs.append((key.strip(), value.strip()))
        return frozenset(pairs)
    return frozenset(selector.items())


def matches(labels: Labels, selector: Selector) -> bool:
    """Whether labels carry every key=value of the selector (an empty selector matches all)."""
    return selector.issubset(labels)


def describe(selector: Selector) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(selector)) or "(none)"
