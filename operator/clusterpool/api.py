"""The ClusterPool API (clusterpool.dev/v1alpha1): pydantic models of spec and status.

These models are the single source of the CRD: `python -m clusterpool.crd` renders
crds/clusterpool.dev_clusterpools.yaml from them, and a test fails when the two drift.
Every rule the CRD can check (bounds, enums, CEL) is also checked here, so an object
stored under an older schema is caught when the operator re-validates it.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, core_schema

from clusterpool.core import labels as label_rules
from clusterpool.core.load import LoadBound, LoadWeights
from clusterpool.engines.profiles import ENGINES, Engine, profile_for

GROUP = "clusterpool.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "ClusterPool"
PLURAL = "clusterpools"
SINGULAR = "clusterpool"
SHORT_NAMES = ["cpool"]
CATEGORIES = ["llm"]

MAX_ENDPOINTS = 256
MAX_MODELS = 64  # model names one pool serves
MODEL_NAME_MAX = 253
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
STATUS_RANGE = r"^[1-5][0-9]{2}(-[1-5][0-9]{2})?$"

# Strings the operator turns into socket addresses, URLs, request lines or object names.
# Each is a regex both engines read alike (pydantic's Rust regex, the apiserver's Go RE2);
# what a regex cannot say (is this an IPv6 address?) is CEL `isIP`, mirrored by `is_ip`.
_DNS_NAME = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
_IPV6ISH = r"[0-9A-Fa-f]*:[0-9A-Fa-f:.]*"
_PORT = r"([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
HOST = rf"^({_DNS_NAME}|{_IPV6ISH})$"
HOST_PORT = rf"^({_DNS_NAME}|\[{_IPV6ISH}\]):{_PORT}$"
HTTP_URL = rf"^https?://({_DNS_NAME}|\[{_IPV6ISH}\])(:{_PORT})?$"
DNS_1035 = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = rf"^{_DNS_NAME}$"
SECRET_KEY = r"^[-._a-zA-Z0-9]+$"
PRINTABLE = r"^[ -~]*$"  # printable ASCII and spaces: nothing that ends a line or a header
CONSUL_NAME = r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
IANA_SVC_NAME = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"  # and a letter, no `--`, at most 15
HOST_FIX = "an IP address or a lowercase DNS name, nothing else (no scheme, port, path or spaces)"
PORT_FIX = "a port 1-65535"
# Names the operator derives from the pool's name: the Service `<name>` (a DNS-1035 label,
# 63 at most), the ConfigMap `<name>-routing`, EndpointSlices `<name>-ipv6-65535` and the
# label value `clusterpool.dev/pool: <name>` all fit when the name is a DNS-1035 label.
POOL_NAME_MAX = 63
POOL_NAME_RULE = (
    f"self.metadata.name.size() <= {POOL_NAME_MAX} && self.metadata.name.matches('{DNS_1035}')",
    f"metadata.name must be a DNS-1035 label (lowercase letters, digits and '-', starting with a letter, "
    f"at most {POOL_NAME_MAX}): the pool's Service is named after it; pick a name like `llm-pool`",
)


def is_ip(text: str) -> bool:
    """What CEL's isIP() accepts: an IPv4 or IPv6 address, without a zone and not IPv4-mapped."""
    if "%" in text:
        return False
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return False
    return not (isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None)


def _bracketed_ip_ok(text: str) -> bool:
    """An IPv6 literal in brackets ([::1]:6379, http://[::1]:8500) must be a real address."""
    if "[" not in text:
        return True
    return is_ip(text[text.index("[") + 1 : text.index("]")])


def pool_name_error(name: str) -> str | None:
    """Why a pool cannot have this name (its Service and ConfigMap are named after it), or None."""
    if len(name) <= POOL_NAME_MAX and re.fullmatch(DNS_1035[1:-1], name):
        return None
    return f"{POOL_NAME_RULE[1]} (got {name!r})"


# CEL rules: (rule, message). The same rule is enforced in Python by the model's validator.
CEL = "x-kubernetes-validations"


def cel(*rules: tuple[str, str]) -> dict[str, Any]:
    return {CEL: [{"rule": r, "message": m} for r, m in rules]}


def cel_when_changed(*rules: tuple[str, str]) -> dict[str, Any]:
    """Rules checked when the value is new or changed. The API server evaluates a CRD's
    rules on every write of the object, status writes included; a rule over every element
    of a list (or every pair) then costs each status write as much as it costs the spec
    change it is there for. An unchanged value passed it when it was written."""
    return {
        CEL: [
            {"rule": f"(oldSelf.hasValue() && oldSelf.value() == self) || ({r})", "message": m, "optionalOldSelf": True}
            for r, m in rules
        ]
    }


def _list_map(*keys: str) -> dict[str, Any]:
    return {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": list(keys)}


class _Text:
    """A string rule, once: CEL for the apiserver (matches, plus `also` where a regex cannot
    say it) and the same check in the models, both with `message` (what is allowed, e.g.)."""

    def __init__(self, pattern: str, message: str, also: tuple[str, Callable[[str], bool]] | None = None) -> None:
        self.pattern, self.message, self.also = pattern, message, also
        self.rule = f'self.matches(r"{pattern}")' + (f" && ({also[0]})" if also else "")

    def check(self, value: str) -> str:
        if re.fullmatch(self.pattern, value) is None or (self.also is not None and not self.also[1](value)):
            raise ValueError(f"{self.message} (got {value!r})")
        return value

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.no_info_after_validator_function(self.check, handler(source))

    def __get_pydantic_json_schema__(self, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        out = handler(schema)
        out[CEL] = [{"rule": self.rule, "message": self.message}]
        return out


HOST_RULE = _Text(
    HOST,
    f"must be {HOST_FIX}; the port goes in `port`; e.g. 198.18.0.7, fd00::7 or llm-a.models.svc",
    ("!self.contains(':') || isIP(self)", lambda v: ":" not in v or is_ip(v)),
)
Host = Annotated[str, HOST_RULE]
HostPort = Annotated[
    str,
    _Text(
        HOST_PORT,
        f"must be host:port, the host {HOST_FIX} (IPv6 in brackets) and {PORT_FIX}; e.g. redis.cache:6379",
        ("!self.startsWith('[') || isIP(self.substring(1, self.indexOf(']')))", _bracketed_ip_ok),
    ),
]
HttpURL = Annotated[
    str,
    _Text(
        HTTP_URL,
        f"must be http:// or https:// and host[:port] only: the host {HOST_FIX}, {PORT_FIX}, no path or query; "
        "e.g. http://consul-server.consul:8500",
        ("!self.contains('[') || isIP(self.substring(self.indexOf('[') + 1, self.indexOf(']')))", _bracketed_ip_ok),
    ),
]
ObjectName = Annotated[
    str,
    _Text(
        DNS_SUBDOMAIN,
        "must be a Kubernetes object name: a lowercase DNS subdomain (a-z, 0-9, '-', '.'); e.g. redis-auth",
    ),
]
SecretKey = Annotated[
    str, _Text(SECRET_KEY, "must be a Secret key: letters, digits, '-', '_' and '.' only; e.g. password")
]
ServiceName = Annotated[
    str,
    _Text(DNS_1035, "must be a Service name: a DNS-1035 label (a-z, 0-9 and '-', starting with a letter); e.g. vllm"),
]
HTTPPath = Annotated[
    str,
    _Text(
        r"^/[!-~]*$",
        "must start with '/' and hold only printable ASCII, no spaces or control characters "
        "(percent-encode the rest); e.g. /v1/models?limit=1",
    ),
]
HeaderValue = Annotated[
    str, _Text(PRINTABLE, "must be printable ASCII and spaces only (no CR, LF, tab or other control characters)")
]
PROBER_HEADERS = ("host", "content-length", "transfer-encoding", "connection")
HeaderName = Annotated[
    str,
    _Text(
        r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$",
        "must be an HTTP token (letters, digits and !#$%&'*+.^_`|~-) and not one the prober sets itself "
        "(Host, Content-Length, Transfer-Encoding, Connection); e.g. Authorization",
        (f"!(self.lowerAscii() in {list(PROBER_HEADERS)})", lambda v: v.lower() not in PROBER_HEADERS),
    ),
]
ConsulName = Annotated[
    str,
    _Text(
        CONSUL_NAME, "must be letters, digits, '-', '_' and '.', starting and ending with a letter or digit; e.g. vllm"
    ),
]
PrintableText = Annotated[str, _Text(PRINTABLE, "must be printable ASCII and spaces only (no control characters)")]
RedisUser = Annotated[str, _Text(r"^[!-~]+$", "must be printable ASCII without spaces; e.g. app")]
LabelValue = Annotated[
    str, _Text(label_rules.LABEL_VALUE, "must be a label value: at most 63 of a-z, A-Z, 0-9, '-', '_', '.'; e.g. vllm")
]


# An OpenAI model name as clients send it in `model`: letters and digits first, then also
# the punctuation real names use (meta-llama/Llama-3.1-8B-Instruct, qwen2.5:7b, gpt-4o@2024).
MODEL_NAME = r"^[A-Za-z0-9][-A-Za-z0-9._:/@+]*$"
ModelName = Annotated[
    str,
    Field(min_length=1, max_length=MODEL_NAME_MAX),
    _Text(
        MODEL_NAME,
        f"must be a model name as clients send it (at most {MODEL_NAME_MAX} characters: a letter or digit, then "
        "letters, digits and - . _ : / @ +; no spaces); e.g. llama-3-8b or meta-llama/Llama-3.1-8B-Instruct",
    ),
]
_UNIQUE_MODELS = (
    "self.all(m, self.exists_one(n, n == m))",
    "each model may appear only once in spec.models: remove the repeats",
)


def _port_name_ok(v: str) -> bool:
    return (
        len(v) <= 15
        and re.fullmatch(IANA_SVC_NAME, v) is not None
        and re.search("[a-z]", v) is not None
        and ("--" not in v)
    )


_K8S_PORT = (
    "type(self) == int ? (self >= 1 && self <= 65535) : (self.size() <= 15 "
    f"&& self.matches(r'{IANA_SVC_NAME}') && self.matches('[a-z]') && !self.contains('--'))",
    f"spec.discovery.kubernetes.port must be {PORT_FIX} or a port name (at most 15 of a-z, 0-9 and '-', "
    "with a letter, no '--'), as in the Service; e.g. http or 8000",
)


class Model(BaseModel):
    model_config = ConfigDict(frozen=True, alias_generator=to_camel, populate_by_name=True, extra="forbid")


Strategy = Literal[
    "RoundRobin", "LeastConnections", "Weighted", "ConsistentHash", "Adaptive", "LeastLoaded", "PrefixAffinity"
]
Source = Literal["Static", "Kubernetes", "Consul", "Etcd"]


# Endpoint labels: Kubernetes label syntax. The values' pattern is plain OpenAPI; the keys'
# rules (no propertyNames in a structural schema) are a CEL rule; both also in Python.
_LABEL_KEYS = (
    f"self.all(k, k.matches(r'{label_rules.LABEL_KEY}') && k.indexOf('/') <= 253)",
    label_rules.KEY_RULE,
)
EndpointLabels = dict[
    Annotated[str, Field(max_length=label_rules.KEY_MAX)],
    Annotated[str, Field(max_length=63, pattern=label_rules.LABEL_VALUE)],
]


def _labels_field(description: str) -> Any:
    return Field(
        default=None,
        description=description,
        json_schema_extra={"maxProperties": label_rules.MAX_LABELS, **cel_when_changed(_LABEL_KEYS)},
    )


class StaticEndpoint(Model):
    """One backend of a static list."""

    name: str = Field(
        min_length=1,
        max_length=63,
        pattern=DNS_LABEL,
        description="Unique name of the endpoint within the pool (a DNS label, e.g. `llm-a`).",
    )
    address: Host = Field(
        min_length=1,
        max_length=253,
        description="IP address or lowercase DNS name the endpoint listens on, nothing else (the port goes in "
        "`port`), e.g. `198.18.0.7` or `llm-a.models.svc`.",
    )
    port: int = Field(ge=1, le=65535, description="TCP port of the endpoint's service.")
    weight: int = Field(
        default=1, ge=1, le=1000, description="Relative share of traffic for weighted strategies (1-1000, default 1)."
    )
    tier: int = Field(
        default=0,
        ge=0,
        le=9,
        description="Priority tier (0-9, default 0). Tier 0 serves; lower tiers take over when it is not healthy "
        "enough (see spec.failover.tiers).",
    )
    labels: EndpointLabels | None = _labels_field(
        f"Labels clients select endpoints by (e.g. model: llama-3-8b, zone: a), at most {label_rules.MAX_LABELS}, "
        "with Kubernetes label syntax."
    )
    capacity: int | None = Field(
        default=None,
        ge=1,
        le=label_rules.MAX_CAPACITY,
        description="Most requests in flight a client sends it at once (default: no limit). LeastConnections "
        "and Adaptive weigh in-flight requests against it.",
    )

    @model_validator(mode="after")
    def _label_rules(self) -> StaticEndpoint:
        problems = label_rules.label_errors(self.labels or {})
        if problems:
            raise ValueError(f"labels of endpoint {self.name}: {'; '.join(problems)}")
        return self


_UNIQUE_ADDRESS = (
    "self.all(a, self.exists_one(b, b.address == a.address && b.port == a.port))",
    "each address:port may appear only once in spec.discovery.static.endpoints",
)


class StaticDiscovery(Model):
    """A fixed list of endpoints."""

    endpoints: list[StaticEndpoint] = Field(
        min_length=1,
        max_length=MAX_ENDPOINTS,
        description=f"The endpoints of the pool, 1 to {MAX_ENDPOINTS}, each with a unique name and address:port.",
        json_schema_extra={**_list_map("name"), **cel_when_changed(_UNIQUE_ADDRESS)},
    )

    @model_validator(mode="after")
    def _unique_addresses(self) -> StaticDiscovery:
        seen: set[tuple[str, int]] = set()
        for ep in self.endpoints:
            if (ep.address, ep.port) in seen:
                raise ValueError(f"{_UNIQUE_ADDRESS[1]} ({ep.address}:{ep.port} repeats)")
            seen.add((ep.address, ep.port))
        names = [ep.name for ep in self.endpoints]
        if len(set(names)) != len(names):
            raise ValueError("endpoint names must be unique in spec.discovery.static.endpoints")
        return self


_ONE_K8S = (
    "has(self.service) != has(self.selector)",
    "spec.discovery.kubernetes needs exactly one of `service` or `selector`",
)


class LabelSelector(Model):
    """Labels that select EndpointSlices (all must match)."""

    match_labels: dict[Annotated[str, Field(max_length=317)], Annotated[LabelValue, Field(max_length=63)]] = Field(
        min_length=1,
        max_length=16,
        description="Label keys and values that an EndpointSlice must all carry.",
        json_schema_extra={"maxProperties": 16, "minProperties": 1, **cel_when_changed(_LABEL_KEYS)},
    )

    @model_validator(mode="after")
    def _keys(self) -> LabelSelector:
        bad = [k for k in self.match_labels if label_rules.key_error(k) is not None]
        if bad:
            raise ValueError(f"{label_rules.KEY_RULE} (got {bad[0]!r})")
        return self


class KubernetesDiscovery(Model):
    """Endpoints from the EndpointSlices of a Service (or of a label selector) in the pool's
    namespace, followed by a watch. Ready endpoints are members; not-ready ones are shown
    but never eligible; terminating ones only when nothing else serves."""

    model_config = ConfigDict(json_schema_extra=cel(_ONE_K8S))

    service: ServiceName | None = Field(
        default=None,
        min_length=1,
        max_length=63,
        description="Name of a Service in the pool's namespace whose EndpointSlices to follow.",
    )
    selector: LabelSelector | None = Field(
        default=None, description="Follow the EndpointSlices with these labels instead of a Service's."
    )
    port: int | str | None = Field(
        default=None,
        description="The backends' port: a port name (as in the Service) or number (the target port). "
        "May be left out when the slices have exactly one port.",
        json_schema_extra={"x-kubernetes-int-or-string": True, **cel(_K8S_PORT)},
    )

    @model_validator(mode="after")
    def _one(self) -> KubernetesDiscovery:
        if (self.service is None) == (self.selector is None):
            raise ValueError(_ONE_K8S[1])
        bad_number = isinstance(self.port, int) and not 1 <= self.port <= 65535
        if bad_number or (isinstance(self.port, str) and not _port_name_ok(self.port)):
            raise ValueError(f"{_K8S_PORT[1]} (got {self.port!r})")
        return self


class SecretKeyRef(Model):
    """A key of a Secret in the pool's namespace."""

    name: ObjectName = Field(min_length=1, max_length=253, description="The Secret's name.")
    key: SecretKey = Field(min_length=1, max_length=253, description="The key within the Secret.")


_CA_HTTPS = (
    "!has(self.caSecretRef) || self.address.startsWith('https://')",
    "caSecretRef applies only to an https:// Consul address",
)


class ConsulConnection(Model):
    """How to reach Consul."""

    model_config = ConfigDict(json_schema_extra=cel(_CA_HTTPS))

    address: HttpURL = Field(
        min_length=1,
        max_length=271,
        description="Consul's HTTP API, scheme and host[:port] only, e.g. http://consul-server.consul:8500.",
    )
    token_secret_ref: SecretKeyRef | None = Field(
        default=None, description="The ACL token, from a Secret in the pool's namespace (never logged)."
    )
    insecure_skip_verify: bool = Field(default=False, description="With https, accept any certificate.")
    ca_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description="With https, the CA bundle (PEM) that signed Consul's certificate, from a Secret in the "
        "pool's namespace (default: the system's trusted CAs).",
    )
    tags: list[Annotated[PrintableText, Field(max_length=128)]] = Field(
        default_factory=list,
        max_length=16,
        description="Service tags: to match (discovery: all of them) or to set (publish).",
        json_schema_extra={"default": []},
    )

    @model_validator(mode="after")
    def _ca_needs_https(self) -> ConsulConnection:
        if self.ca_secret_ref is not None and not self.address.startswith("https://"):
            raise ValueError(_CA_HTTPS[1])
        return self


class ConsulDiscovery(ConsulConnection):
    """Endpoints from Consul's catalog, followed with blocking queries. Passing instances are
    members; warning ones are members marked Warning (unless onlyPassing); critical ones are
    listed but never eligible."""

    service: ConsulName = Field(min_length=1, max_length=128, description="The Consul service name.")
    datacenter: ConsulName | None = Field(
        default=None, max_length=128, description="Datacenter (default: the agent's)."
    )
    namespace: ConsulName | None = Field(default=None, max_length=128, description="Consul Enterprise namespace.")
    partition: ConsulName | None = Field(default=None, max_length=128, description="Consul Enterprise admin partition.")
    only_passing: bool = Field(default=False, description="Only instances whose checks all pass (Consul's ?passing).")
    wait_seconds: int = Field(
        default=60, ge=1, le=600, description="How long one blocking query may wait for a change (default 60)."
    )


_ETCD_TLS_HTTPS = (
    "(!has(self.caSecretRef) && !has(self.certSecretRef)"
    " && !(has(self.insecureSkipVerify) && self.insecureSkipVerify))"
    " || self.endpoints.all(e, e.startsWith('https://'))",
    "caSecretRef, certSecretRef and insecureSkipVerify apply only when every etcd endpoint is https://",
)
_ETCD_CERT_KEY = (
    "has(self.certSecretRef) == has(self.keySecretRef)",
    "certSecretRef and keySecretRef go together (the client certificate and its key)",
)
_ETCD_USER_PASSWORD = (
    "has(self.username) == has(self.passwordSecretRef)",
    "username and passwordSecretRef go together (etcd's user and its password)",
)
_ETCD_PREFIX = (
    "self.prefix != '/'",
    "prefix `/` would take every key of etcd: name the folder the endpoints register under, e.g. /services/vllm/",
)


class EtcdDiscovery(Model):
    """Endpoints registered in etcd (v3 API) as keys under a prefix, each value a JSON object
    `{"address": ..., "port": ..., "weight": ..., "tier": ..., "labels": {...}}` (weight, tier and
    labels optional), followed by a watch that resumes from the last revision it saw."""

    model_config = ConfigDict(json_schema_extra=cel(_ETCD_TLS_HTTPS, _ETCD_CERT_KEY, _ETCD_USER_PASSWORD, _ETCD_PREFIX))

    endpoints: list[Annotated[str, Field(max_length=253, pattern=r"^https?://[^\s/]+$")]] = Field(
        min_length=1,
        max_length=8,
        description="etcd's client URLs, e.g. https://etcd-0.etcd:2379; tried in turn when one cannot be reached.",
    )
    prefix: str = Field(
        min_length=1,
        max_length=512,
        description="The key prefix the endpoints register under, e.g. /services/vllm/ (each key one endpoint; "
        "the rest of the key after the prefix names it).",
    )
    username: str | None = Field(
        default=None, min_length=1, max_length=128, description="etcd user (with auth enabled in etcd)."
    )
    password_secret_ref: SecretKeyRef | None = Field(
        default=None, description="The user's password, from a Secret in the pool's namespace (never logged)."
    )
    ca_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description="With https, the CA bundle (PEM) that signed etcd's certificate, from a Secret in the pool's "
        "namespace (default: the system's trusted CAs).",
    )
    cert_secret_ref: SecretKeyRef | None = Field(
        default=None, description="With https, a client certificate (PEM) for etcd's --client-cert-auth."
    )
    key_secret_ref: SecretKeyRef | None = Field(
        default=None, description="The client certificate's private key (PEM), with certSecretRef."
    )
    insecure_skip_verify: bool = Field(default=False, description="With https, accept any certificate.")

    @model_validator(mode="after")
    def _consistent(self) -> EtcdDiscovery:
        tls = self.ca_secret_ref is not None or self.cert_secret_ref is not None or self.insecure_skip_verify
        if tls and not all(e.startswith("https://") for e in self.endpoints):
            raise ValueError(_ETCD_TLS_HTTPS[1])
        for rule, ok in (
            (_ETCD_CERT_KEY, (self.cert_secret_ref is None) == (self.key_secret_ref is None)),
            (_ETCD_USER_PASSWORD, (self.username is None) == (self.password_secret_ref is None)),
            (_ETCD_PREFIX, self.prefix != "/"),
        ):
            if not ok:
                raise ValueError(rule[1])
        return self


_ONE_SOURCE = (
    "(has(self.static) ? 1 : 0) + (has(self.kubernetes) ? 1 : 0) + (has(self.consul) ? 1 : 0)"
    " + (has(self.etcd) ? 1 : 0) == 1",
    "spec.discovery needs exactly one source: `static`, `kubernetes`, `consul` or `etcd`",
)


class Discovery(Model):
    """Where the pool's endpoints come from. Exactly one source must be set."""

    model_config = ConfigDict(json_schema_extra=cel(_ONE_SOURCE))

    static: StaticDiscovery | None = Field(default=None, description="A fixed list of endpoints.")
    kubernetes: KubernetesDiscovery | None = Field(
        default=None, description="Endpoints from EndpointSlices, followed live."
    )
    consul: ConsulDiscovery | None = Field(default=None, description="Endpoints from Consul, followed live.")
    etcd: EtcdDiscovery | None = Field(default=None, description="Endpoints registered in etcd, followed live.")

    @model_validator(mode="after")
    def _one_source(self) -> Discovery:
        if sum(x is not None for x in (self.static, self.kubernetes, self.consul, self.etcd)) != 1:
            raise ValueError(_ONE_SOURCE[1])
        return self

    @property
    def source(self) -> Source:
        if self.static is not None:
            return "Static"
        if self.kubernetes is not None:
            return "Kubernetes"
        return "Consul" if self.consul is not None else "Etcd"


_RANGE_ORDER = (
    "self.all(s, s.size() == 3 || int(s.substring(0, 3)) <= int(s.substring(4, 7)))",
    "a status range is written low-high, e.g. 200-299",
)


class HTTPHeader(Model):
    """A request header sent with every probe."""

    name: HeaderName = Field(min_length=1, max_length=128, description="Header name.")
    value: HeaderValue = Field(max_length=1024, description="Header value (printable ASCII, no CR/LF).")


DEFAULT_HEALTH_PATH = "/health"
_TLS_ONLY = (
    "!has(self.insecureSkipVerify) || !self.insecureSkipVerify || self.scheme == 'HTTPS'",
    "spec.healthCheck.http.insecureSkipVerify applies only with scheme HTTPS",
)


_UNIQUE_HEADERS = (
    "self.all(a, self.exists_one(b, b.name.lowerAscii() == a.name.lowerAscii()))",
    "header names must be unique in spec.healthCheck.http.headers, ignoring case (HTTP does)",
)


class HTTPCheck(Model):
    """An HTTP request to each endpoint; healthy when the answer's status is expected
    (and its body contains bodyContains, when set)."""

    model_config = ConfigDict(json_schema_extra=cel(_TLS_ONLY))

    method: Literal["GET", "HEAD", "POST", "OPTIONS"] = Field(
        default="GET", description="Request method: GET (default), HEAD, POST or OPTIONS."
    )
    path: HTTPPath | None = Field(
        default=None,
        min_length=1,
        max_length=1024,
        description="Path to request, starting with `/`, printable ASCII without spaces (default: the health "
        "path of spec.engine's profile, else `/health`).",
    )
    port: int | None = Field(
        default=None, ge=1, le=65535, description="Port to probe; defaults to the endpoint's port."
    )
    scheme: Literal["HTTP", "HTTPS"] = Field(default="HTTP", description="HTTP (default) or HTTPS.")
    insecure_skip_verify: bool = Field(
        default=False, description="With HTTPS, accept any certificate (self-signed backends). Default false."
    )
    headers: list[HTTPHeader] = Field(
        default_factory=list,
        max_length=16,
        description="Extra request headers, e.g. an Authorization for a model API.",
        json_schema_extra={**_list_map("name"), **cel_when_changed(_UNIQUE_HEADERS), "default": []},
    )
    expected_statuses: list[Annotated[str, Field(max_length=7, pattern=STATUS_RANGE)]] = Field(
        default=["200-299"],
        min_length=1,
        max_length=16,
        description="Status codes that mean healthy: single codes (`204`) or inclusive ranges "
        "(`200-299`, the default).",
        json_schema_extra=cel(_RANGE_ORDER),
    )
    body_contains: str | None = Field(
        default=None,
        min_length=1,
        max_length=1024,
        description="When set, the answer's body (its first 64 KiB) must contain this text.",
    )
    keep_alive: bool = Field(
        default=True,
        description="Reuse one HTTP/1.1 connection per endpoint across probes (default true); "
        "false opens a new connection for every probe.",
    )

    @model_validator(mode="after")
    def _rules(self) -> HTTPCheck:
        for s in self.expected_statuses:
            if len(s) == 7 and int(s[:3]) > int(s[4:]):
                raise ValueError(f"{_RANGE_ORDER[1]} (got {s})")
        if self.insecure_skip_verify and self.scheme != "HTTPS":
            raise ValueError(_TLS_ONLY[1])
        names = [h.name.lower() for h in self.headers]
        if len(set(names)) != len(names):
            raise ValueError(_UNIQUE_HEADERS[1])
        return self

    def path_for(self, engine: str | None) -> str:
        """The path to request: this check's, else the engine profile's health path, else /health."""
        profile = profile_for(engine)
        return self.path or (profile.health_path if profile is not None else DEFAULT_HEALTH_PATH)

    def accepts(self, status: int) -> bool:
        for s in self.expected_statuses:
            lo, hi = (int(s), int(s)) if len(s) == 3 else (int(s[:3]), int(s[4:]))
            if lo <= status <= hi:
                return True
        return False


class TCPCheck(Model):
    """A TCP connect to each endpoint; healthy when the connection is accepted."""

    port: int | None = Field(
        default=None, ge=1, le=65535, description="Port to probe; defaults to the endpoint's port."
    )


_ONE_CHECK = (
    "(has(self.http) ? 1 : 0) + (has(self.tcp) ? 1 : 0) + (has(self.composite) ? 1 : 0) == 1",
    "spec.healthCheck needs exactly one of `http`, `tcp` or `composite`",
)
_ONE_SUBCHECK = (
    "(has(self.http) ? 1 : 0) + (has(self.tcp) ? 1 : 0) == 1",
    "each check of spec.healthCheck.composite.checks needs exactly one of `http` or `tcp`",
)


class NamedCheck(Model):
    """One check of a composite."""

    model_config = ConfigDict(json_schema_extra=cel(_ONE_SUBCHECK))

    name: str = Field(min_length=1, max_length=63, pattern=DNS_LABEL, description="Name of this check.")
    http: HTTPCheck | None = Field(default=None, description="Probe with an HTTP request.")
    tcp: TCPCheck | None = Field(default=None, description="Probe with a TCP connect.")

    @model_validator(mode="after")
    def _one(self) -> NamedCheck:
        if (self.http is None) == (self.tcp is None):
            raise ValueError(_ONE_SUBCHECK[1])
        return self


class CompositeCheck(Model):
    """Several checks per probe, combined: All must pass, Any may, or a Majority must."""

    mode: Literal["All", "Any", "Majority"] = Field(
        default="All", description="All (default), Any or Majority of the checks must pass."
    )
    checks: list[NamedCheck] = Field(
        min_length=2,
        max_length=8,
        description="The checks, 2 to 8, run concurrently within timeoutSeconds.",
        json_schema_extra=_list_map("name"),
    )


_TIMEOUT_BELOW_INTERVAL = (
    "self.timeoutSeconds < self.intervalSeconds",
    "spec.healthCheck.timeoutSeconds must be less than intervalSeconds",
)


class HealthCheck(Model):
    """Active health probing of every endpoint (Envoy's vocabulary)."""

    model_config = ConfigDict(json_schema_extra=cel(_ONE_CHECK, _TIMEOUT_BELOW_INTERVAL))

    interval_seconds: int = Field(
        default=10, ge=1, le=3600, description="Seconds between probes of one endpoint (default 10)."
    )
    timeout_seconds: int = Field(
        default=2,
        ge=1,
        le=3599,
        description="Seconds a probe may take before it counts as failed; less than intervalSeconds (default 2).",
    )
    interval_jitter_percent: int = Field(
        default=10,
        ge=0,
        le=100,
        description="Random extra delay added to each interval, in percent "
        "of it, so probes of many pools spread out (default 10).",
    )
    healthy_threshold: int = Field(
        default=2,
        ge=1,
        le=100,
        description="Consecutive successes that turn an unhealthy endpoint "
        "healthy (default 2). The first probe decides at once.",
    )
    unhealthy_threshold: int = Field(
        default=3, ge=1, le=100, description="Consecutive failures that turn a healthy endpoint unhealthy (default 3)."
    )
    degraded_latency_milliseconds: int | None = Field(
        default=None,
        ge=1,
        le=60000,
        description="A passing probe slower than this counts as slow: unhealthyThreshold slow probes in a row "
        "mark the endpoint Degraded (still serving), healthyThreshold fast ones make it Healthy again.",
    )
    http: HTTPCheck | None = Field(default=None, description="Probe with an HTTP request.")
    tcp: TCPCheck | None = Field(default=None, description="Probe with a TCP connect.")
    composite: CompositeCheck | None = Field(default=None, description="Probe with several checks, combined.")

    @model_validator(mode="after")
    def _rules(self) -> HealthCheck:
        if sum(x is not None for x in (self.http, self.tcp, self.composite)) != 1:
            raise ValueError(_ONE_CHECK[1])
        if self.timeout_seconds >= self.interval_seconds:
            raise ValueError(
                f"{_TIMEOUT_BELOW_INTERVAL[1]} (got timeoutSeconds={self.timeout_seconds}, "
                f"intervalSeconds={self.interval_seconds})"
            )
        return self


def _default_health_check() -> HealthCheck:
    return HealthCheck(tcp=TCPCheck())


_OPEN_CAP = (
    "self.maxOpenSeconds >= self.openSeconds",
    "spec.failover.circuitBreaker.maxOpenSeconds must be at least openSeconds",
)


class CircuitBreaker(Model):
    """Per-endpoint circuit breaker: Closed, Open (ejected), HalfOpen (trial probes)."""

    model_config = ConfigDict(json_schema_extra=cel(_OPEN_CAP))

    failure_threshold: int | None = Field(
        default=None,
        ge=1,
        le=100,
        description="Consecutive failed probes that open the breaker (eject the endpoint); "
        "defaults to healthCheck.unhealthyThreshold.",
    )
    open_seconds: int = Field(
        default=30,
        ge=1,
        le=3600,
        description="How long the first ejection lasts; the n-th lasts n times as long (default 30).",
    )
    max_open_seconds: int = Field(default=300, ge=1, le=86400, description="Cap on an ejection's length (default 300).")
    half_open_max_probes: int = Field(
        default=1,
        ge=1,
        le=100,
        description="Trial requests let through at once while HalfOpen (clients' breakers; the operator "
        "probes a HalfOpen endpoint once per interval). Default 1.",
    )
    success_threshold: int = Field(
        default=2, ge=1, le=100, description="Passing trials that close the breaker again (default 2)."
    )

    @model_validator(mode="after")
    def _cap(self) -> CircuitBreaker:
        if self.max_open_seconds < self.open_seconds:
            raise ValueError(f"{_OPEN_CAP[1]} (got {self.max_open_seconds} < {self.open_seconds})")
        return self


_HYSTERESIS = (
    "self.failbackPercent >= self.failoverPercent",
    "spec.failover.tiers.failbackPercent must be at least failoverPercent",
)


class Tiers(Model):
    """When traffic moves between priority tiers."""

    model_config = ConfigDict(json_schema_extra=cel(_HYSTERESIS))

    failover_percent: int = Field(
        default=50,
        ge=0,
        le=100,
        description="The serving tier is left for the next one when its healthy share falls below this (default 50).",
    )
    failback_percent: int = Field(
        default=80,
        ge=0,
        le=100,
        description="A better tier takes traffic back once its healthy share reaches this; at least "
        "failoverPercent, so traffic does not flap (default 80).",
    )

    @model_validator(mode="after")
    def _hysteresis(self) -> Tiers:
        if self.failback_percent < self.failover_percent:
            raise ValueError(_HYSTERESIS[1])
        return self


class Failover(Model):
    """Ejection, panic, tiers and slow start (Envoy's outlier detection vocabulary)."""

    circuit_breaker: CircuitBreaker = Field(
        default_factory=CircuitBreaker,
        description="Per-endpoint circuit breaker.",
        json_schema_extra={"default": CircuitBreaker().model_dump(by_alias=True, exclude_none=True)},
    )
    max_ejection_percent: int = Field(
        default=50,
        ge=0,
        le=100,
        description="Never eject more than this share of the endpoints at once; one ejection is always "
        "allowed, so small pools can eject (default 50).",
    )
    panic_threshold_percent: int = Field(
        default=50,
        ge=0,
        le=100,
        description="When the serving tier's healthy share falls below this, route to all of its endpoints "
        "and set the Panic condition; 0 disables (default 50).",
    )
    slow_start_seconds: int = Field(
        default=0,
        ge=0,
        le=3600,
        description="An endpoint that recovers ramps its weight from 10% to 100% over this many seconds; "
        "0 disables (default 0).",
    )
    tiers: Tiers = Field(
        default_factory=Tiers,
        description="Failover between priority tiers.",
        json_schema_extra={"default": Tiers().model_dump(by_alias=True, exclude_none=True)},
    )


class ConsulPublish(ConsulConnection):
    """Register the pool's endpoints in Consul, with checks that carry the operator's probe
    results (TTL checks refreshed every interval), and deregister them with the pool."""

    service: ConsulName | None = Field(
        default=None, max_length=128, description="The service name in Consul (default: the pool's name)."
    )


class Publish(Model):
    """Where else the pool publishes its endpoints (it always publishes a Service,
    EndpointSlices and the routing ConfigMap)."""

    consul: ConsulPublish | None = Field(default=None, description="Register the endpoints in Consul.")


CacheType = Literal["None", "Memory", "Redis", "Layered"]

_ONE_REDIS = (
    "has(self.address) != has(self.clusterNodes)",
    "spec.cache.redis needs exactly one of `address` (one server) or `clusterNodes` (a Redis Cluster)",
)
_CLUSTER_DB = (
    "!has(self.clusterNodes) || !has(self.database) || self.database == 0",
    "spec.cache.redis.database must be 0 with clusterNodes (a Redis Cluster has only database 0)",
)
_REDIS_TLS_ONLY = (
    "(!has(self.insecureSkipVerify) || !self.insecureSkipVerify) && !has(self.caSecretRef) "
    "|| (has(self.tls) && self.tls)",
    "spec.cache.redis.insecureSkipVerify and caSecretRef apply only with tls: true",
)


class RedisSpec(Model):
    """How to reach Redis: one server or a Redis Cluster."""

    model_config = ConfigDict(json_schema_extra=cel(_ONE_REDIS, _CLUSTER_DB, _REDIS_TLS_ONLY))

    address: HostPort | None = Field(
        default=None, max_length=261, description="One Redis server, host:port (e.g. redis:6379)."
    )
    cluster_nodes: list[Annotated[HostPort, Field(max_length=261)]] | None = Field(
        default=None,
        min_length=1,
        max_length=16,
        description="Some nodes of a Redis Cluster, host:port; the rest are found from them.",
    )
    database: int = Field(default=0, ge=0, le=15, description="Database number (default 0; only 0 on a cluster).")
    username: RedisUser | None = Field(default=None, max_length=128, description="ACL user name (Redis 6+).")
    password_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description="The password, from a Secret in the pool's namespace. Clients read the Secret "
        "themselves; the routing table names it and never holds the password.",
    )
    tls: bool = Field(default=False, description="Connect with TLS (default false).")
    insecure_skip_verify: bool = Field(default=False, description="With TLS, accept any certificate.")
    ca_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description="With TLS, the CA bundle (PEM) that signed Redis's certificate, from a Secret in the "
        "pool's namespace (default: the system's trusted CAs).",
    )
    timeout_milliseconds: int = Field(
        default=250,
        ge=1,
        le=10000,
        description="Connect and command timeout; a slower Redis counts as down and clients use their "
        "local layer (default 250).",
    )

    @model_validator(mode="after")
    def _rules(self) -> RedisSpec:
        if (self.address is None) == (self.cluster_nodes is None):
            raise ValueError(_ONE_REDIS[1])
        if self.cluster_nodes is not None and self.database != 0:
            raise ValueError(_CLUSTER_DB[1])
        if (self.insecure_skip_verify or self.ca_secret_ref is not None) and not self.tls:
            raise ValueError(_REDIS_TLS_ONLY[1])
        return self


class WriteBackSpec(Model):
    """How a layered cache in WriteBack mode queues writes for Redis."""

    flush_interval_milliseconds: int = Field(
        default=1000,
        ge=10,
        le=60000,
        description="Pending writes go to Redis this often (default 1000); a killed client loses at most "
        "this much of its writes.",
    )
    max_pending: int = Field(
        default=10000,
        ge=1,
        le=1000000,
        description="Keys a client may hold unflushed (default 10000); beyond it writers flush inline, or "
        "while Redis is down the oldest pending writes are dropped.",
    )


class WarmUpSpec(Model):
    """Fill the cache before traffic needs it."""

    keys: list[Annotated[str, Field(min_length=1, max_length=512)]] = Field(
        default_factory=list,
        max_length=1000,
        description="Keys clients load from Redis into their local layer when they start.",
        json_schema_extra={"default": []},
    )
    from_version: int | None = Field(
        default=None,
        ge=0,
        le=2147483647,
        description="When spec.cache.version changes, the operator first copies the entries of this version "
        "into the new one (existing entries win), then removes the old versions.",
    )
    max_keys: int = Field(
        default=100000, ge=1, le=10000000, description="At most this many entries are copied (default 100000)."
    )


_REDIS_NEEDED = (
    "(self.type == 'Redis' || self.type == 'Layered') == has(self.redis)",
    "spec.cache.redis is required with type Redis or Layered, and not allowed with None or Memory",
)
_WRITE_BACK_LAYERED = (
    "!has(self.writeMode) || self.writeMode == 'WriteThrough' || self.type == 'Layered'",
    "spec.cache.writeMode WriteBack needs type Layered (a local layer to write back from)",
)
_WARM_FROM_OTHER = (
    "!has(self.warmUp) || !has(self.warmUp.fromVersion) || !has(self.version) "
    "|| self.warmUp.fromVersion != self.version",
    "spec.cache.warmUp.fromVersion must differ from spec.cache.version",
)


class CacheSpec(Model):
    """The pool's response cache, used by the client SDK: in memory, in Redis, or a local
    memory layer in front of Redis."""

    model_config = ConfigDict(json_schema_extra=cel(_REDIS_NEEDED, _WRITE_BACK_LAYERED, _WARM_FROM_OTHER))

    type: CacheType = Field(
        description="None (no cache), Memory (each client process its own), Redis (shared), or Layered "
        "(a local memory layer in front of Redis)."
    )
    policy: Literal["LRU", "LFU", "FIFO", "TTL"] = Field(
        default="LRU",
        description="Eviction in the memory layer: LRU (default), LFU, FIFO or TTL (the first to expire).",
    )
    max_entries: int = Field(
        default=10000, ge=1, le=10000000, description="Entries the memory layer holds (default 10000)."
    )
    max_megabytes: int | None = Field(
        default=None, ge=1, le=65536, description="Bound on the memory layer's size in MiB (keys and values)."
    )
    ttl_seconds: int = Field(
        default=3600, ge=1, le=2592000, description="How long an entry lives, in every layer (default 3600)."
    )
    version: int = Field(
        default=1,
        ge=0,
        le=2147483647,
        description="Change it to invalidate the whole cache at once: entries of other versions become "
        "unreachable, and the operator removes them from Redis in the background.",
    )
    key_prefix: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9:/._-]+$",
        description="Prefix of the pool's keys in Redis (default `clusterpool:<namespace>/<name>:`).",
    )
    write_mode: Literal["WriteThrough", "WriteBack"] = Field(
        default="WriteThrough",
        description="Layered only: WriteThrough (default; a write reaches Redis before it returns) or "
        "WriteBack (written locally, flushed to Redis in batches).",
    )
    write_back: WriteBackSpec = Field(
        default_factory=WriteBackSpec,
        description="WriteBack settings.",
        json_schema_extra={"default": WriteBackSpec().model_dump(by_alias=True, exclude_none=True)},
    )
    redis: RedisSpec | None = Field(default=None, description="Where Redis is (type Redis or Layered).")
    warm_up: WarmUpSpec | None = Field(default=None, description="Warm-up on client start and on version change.")

    @model_validator(mode="after")
    def _rules(self) -> CacheSpec:
        if (self.type in ("Redis", "Layered")) != (self.redis is not None):
            raise ValueError(_REDIS_NEEDED[1])
        if self.write_mode == "WriteBack" and self.type != "Layered":
            raise ValueError(_WRITE_BACK_LAYERED[1])
        if self.warm_up is not None and self.warm_up.from_version == self.version:
            raise ValueError(_WARM_FROM_OTHER[1])
        return self


class Hedging(Model):
    """Hedged requests: when no response head has come from an attempt by a deadline, send the
    request to another endpoint too; the first head wins and the other attempt is cancelled."""

    after_milliseconds: int = Field(
        ge=1,
        le=600000,
        description="How long an attempt waits for its response head before a hedge goes to another endpoint "
        "(e.g. the pool's time to first token at p95). Required.",
    )
    max_hedges: int = Field(
        default=1,
        ge=1,
        le=4,
        description="Most hedges per request, one more each afterMilliseconds (default 1). Hedges and retries "
        "draw from the same retry budget.",
    )


WEIGHTS, BOUND = LoadWeights(), LoadBound()  # their defaults, in core/load.py


def _hundredths(x: float) -> int:
    return round(x * 100)


def _weight(what: str, default: int) -> Any:
    return Field(default=default, ge=0, le=100000, description=f"{what}, in hundredths (default {default}).")


class LeastLoadedWeights(Model):
    """LeastLoaded's score (and PrefixAffinity's choice when every endpoint is over its bound):
    each signal's weight, in hundredths (100 = a weight of 1). The defaults were chosen by the
    routing benchmark (docs/routing-bench.md)."""

    waiting: int = _weight("Per request waiting in the engine's queue", _hundredths(WEIGHTS.waiting))
    running: int = _weight("Per sequence the engine is running", _hundredths(WEIGHTS.running))
    kv_usage: int = _weight("Per whole KV cache in use (1.0 = full)", _hundredths(WEIGHTS.kv_usage))
    in_flight: int = _weight("Per request this client has in flight there", _hundredths(WEIGHTS.inflight))
    latency: int = _weight(
        "Per multiple of the fleet's median latency the endpoint's recent latency is above it (beyond 1.5x)",
        _hundredths(WEIGHTS.latency),
    )


class LeastLoadedSpec(Model):
    weights_percent: LeastLoadedWeights = Field(
        default_factory=LeastLoadedWeights,
        description="The weights of the score's signals, in hundredths (100 = 1.0).",
        json_schema_extra={"default": LeastLoadedWeights().model_dump(by_alias=True)},
    )


class PrefixLoadBound(Model):
    """When the endpoint a prefix hashes to counts as too busy, so the next in its order takes
    the request: any one of these exceeded."""

    waiting: int = Field(
        default=round(BOUND.waiting),
        ge=0,
        le=100000,
        description=f"Requests waiting in the engine's queue (default {round(BOUND.waiting)}).",
    )
    kv_usage_percent: int = Field(
        default=_hundredths(BOUND.kv_usage),
        ge=0,
        le=100,
        description=f"KV cache in use, in percent (default {_hundredths(BOUND.kv_usage)}).",
    )
    in_flight_percent_of_mean: int = Field(
        default=_hundredths(BOUND.inflight_factor),
        ge=100,
        le=10000,
        description="This client's requests in flight there, in percent of the mean over the endpoints (plus "
        f"one): consistent hashing with bounded loads (default {_hundredths(BOUND.inflight_factor)}).",
    )


class PrefixAffinitySpec(Model):
    load_bound: PrefixLoadBound = Field(
        default_factory=PrefixLoadBound,
        description="When the prefix's endpoint is too busy and the next one takes the request.",
        json_schema_extra={"default": PrefixLoadBound().model_dump(by_alias=True)},
    )


class ClusterPoolSpec(Model):
    """The desired pool: where its endpoints come from, how they are probed and balanced."""

    strategy: Strategy = Field(
        default="RoundRobin",
        description="How clients pick an endpoint per request: RoundRobin (default), "
        "LeastConnections, Weighted, ConsistentHash, Adaptive, LeastLoaded (engine-reported queue and KV "
        "use, see spec.engine) or PrefixAffinity (the same prompt prefix or x-session-id to the same "
        "endpoint, within a load bound). See docs/load-balancing.md.",
    )
    engine: Engine | None = Field(
        default=None,
        description=f"The inference engine the endpoints run: {', '.join(ENGINES)} (a generic "
        "OpenAI-compatible API). Names its health path (used by HTTP probes that set no path) and the "
        "load gauges clients scrape for LeastLoaded and PrefixAffinity. Default: none (client-side "
        "signals only).",
    )
    hedging: Hedging | None = Field(
        default=None,
        description="Hedge requests whose response head is late (inference POSTs and idempotent methods, "
        "before any output): the gateway and the SDK's async transport send a second attempt to an endpoint "
        "not tried yet and cancel the loser. Default: off. See docs/load-balancing.md.",
    )
    least_loaded: LeastLoadedSpec | None = Field(
        default=None,
        description="LeastLoaded's weights (also PrefixAffinity's when every endpoint is over its bound). "
        "Default: the benchmark's. Published in the routing table: the gateway and the SDK use them.",
    )
    prefix_affinity: PrefixAffinitySpec | None = Field(
        default=None,
        description="PrefixAffinity's load bound. Default: the benchmark's. Published in the routing table: "
        "the gateway and the SDK use it.",
    )
    discovery: Discovery = Field(description="Where the pool's endpoints come from.")
    health_check: HealthCheck = Field(
        default_factory=_default_health_check,
        description="How endpoints are probed (default: TCP connect every 10s).",
        json_schema_extra={"default": _default_health_check().model_dump(by_alias=True, exclude_none=True)},
    )
    failover: Failover = Field(
        default_factory=Failover,
        description="Ejection, panic mode, priority tiers and slow start.",
        json_schema_extra={"default": Failover().model_dump(by_alias=True, exclude_none=True)},
    )
    publish: Publish | None = Field(default=None, description="Publish the endpoints elsewhere too (Consul).")
    cache: CacheSpec | None = Field(
        default=None, description="The response cache clients use (default: none). See docs/caching.md."
    )
    models: list[ModelName] | None = Field(
        default=None,
        max_length=MAX_MODELS,
        description=f"The OpenAI model names the pool serves (the `model` field of a request), at most {MAX_MODELS}, "
        "each once. Unique per namespace: when two pools claim a model, the one created first keeps it and the "
        "other reports ModelsConflict. The gateway routes requests by them; they are in the routing table.",
        json_schema_extra=cel_when_changed(_UNIQUE_MODELS),
    )

    @field_validator("models")
    @classmethod
    def _unique_models(cls, models: list[str] | None) -> list[str] | None:
        repeated = sorted({m for m in models or [] if (models or []).count(m) > 1})
        if repeated:
            raise ValueError(f"{_UNIQUE_MODELS[1]} (got {', '.join(repeated)} more than once)")
        return models


# ------------------------------------------------------------------------- status

Health = Literal["Unknown", "Healthy", "Degraded", "Unhealthy"]
ConditionStatus = Literal["True", "False", "Unknown"]
REASON = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"


BreakerState = Literal["Closed", "Open", "HalfOpen"]


class EndpointLoadStatus(Model):
    """The engine's load gauges (spec.engine's profile) as the operator last read them: a
    coarse view, read every few probe rounds and written only along with other status
    changes, so `readAt` says how old it is. Clients route on their own, fresher readings."""

    waiting: int | None = Field(default=None, ge=0, description="Requests waiting in the engine's queue.")
    running: int | None = Field(default=None, ge=0, description="Requests (sequences) the engine is running.")
    kv_cache_usage_percent: int | None = Field(
        default=None, ge=0, le=100, description="Share of the engine's KV cache in use, in percent."
    )
    read_at: str = Field(json_schema_extra={"format": "date-time"}, description="When the gauges were read.")
    reason: str | None = Field(
        default=None,
        max_length=128,
        description="Why a gauge is absent, in one CamelCase word: GaugesMissing (the metrics lack gauges the "
        "profile lists), MetricsTimeout, ConnectionRefused, MetricsError, MetricsFailed.",
    )
    message: str | None = Field(default=None, max_length=1024, description="The same, for people.")


class PoolLoadStatus(Model):
    """The engines' load summed over the serving endpoints, from status.endpoints[].load."""

    waiting: int = Field(default=0, ge=0, description="Requests waiting in the engines' queues, in all.")
    running: int = Field(default=0, ge=0, description="Requests the engines are running, in all.")
    reporting: int = Field(default=0, ge=0, description="Serving endpoints whose engine reported its queue.")
    read_at: str | None = Field(
        default=None, json_schema_extra={"format": "date-time"}, description="The oldest of those readings."
    )


class EndpointStatus(Model):
    """What the operator knows of one endpoint."""

    name: str = Field(max_length=63, description="The endpoint's name.")
    address: str = Field(max_length=253, description="The endpoint's address.")
    port: int = Field(ge=1, le=65535, description="The endpoint's port.")
    tier: int = Field(default=0, ge=0, le=9, description="The endpoint's priority tier.")
    weight: int = Field(ge=0, le=1000, description="The endpoint's configured weight.")
    labels: dict[str, str] | None = Field(
        default=None,
        description="The endpoint's labels (declared, or from its discovery source).",
        json_schema_extra={"maxProperties": label_rules.MAX_LABELS},
    )
    capacity: int | None = Field(
        default=None, ge=1, description="Most requests in flight a client sends it (absent: no limit)."
    )
    effective_weight: int = Field(
        default=0, ge=0, le=1000, description="The weight clients use now: 0 when not eligible, ramped in slow start."
    )
    eligible: bool = Field(default=False, description="Whether clients may send traffic to it now.")
    health: Health = Field(
        description="Probed health: Unknown (not probed yet), Healthy, Degraded (passing but slow) or Unhealthy."
    )
    source_state: Literal["Ready", "Warning", "NotReady", "Terminating"] = Field(
        default="Ready",
        description="What discovery says: Ready, Warning (Consul: a check warns; still eligible), NotReady "
        "(listed, never eligible) or Terminating (used only while nothing else is ready).",
    )
    breaker: BreakerState = Field(
        default="Closed", description="Circuit breaker: Closed (in), Open (ejected), HalfOpen (trial probes)."
    )
    ejections: int = Field(default=0, ge=0, description="How many times it was ejected (drives the open time).")
    ejection_limited: bool | None = Field(
        default=None, description="True when it should be ejected but maxEjectionPercent keeps it in."
    )
    consecutive_failures: int = Field(default=0, ge=0, description="Failed probes in a row.")
    open_until: str | None = Field(
        default=None, json_schema_extra={"format": "date-time"}, description="When an Open breaker turns HalfOpen."
    )
    recovered_at: str | None = Field(
        default=None, json_schema_extra={"format": "date-time"}, description="When the breaker last closed again."
    )
    last_probe_latency_milliseconds: int | None = Field(
        default=None,
        ge=0,
        description="Latency of a recent probe (refreshed when it moves by more than a quarter).",
    )
    reason: str | None = Field(
        default=None, max_length=128, description="Why, in one CamelCase word (e.g. ConnectionRefused)."
    )
    message: str | None = Field(default=None, max_length=1024, description="The last probe outcome, for people.")
    last_transition_time: str | None = Field(
        default=None, json_schema_extra={"format": "date-time"}, description="When health last changed."
    )
    load: EndpointLoadStatus | None = Field(
        default=None, description="The engine's load as last read, while the endpoint serves (spec.engine)."
    )


class Condition(Model):
    """A metav1.Condition."""

    type: str = Field(max_length=316, description="Condition type, e.g. Ready.")
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(min_length=1, max_length=1024, pattern=REASON, description="Why, in one CamelCase word.")
    message: str = Field(max_length=32768, description="Details for people.")
    last_transition_time: str = Field(
        json_schema_extra={"format": "date-time"}, description="When status last changed."
    )
    observed_generation: int | None = Field(
        default=None, ge=0, description="The spec generation this condition is about."
    )


class CacheStatus(Model):
    """What the operator sees of the pool's cache."""

    type: CacheType = Field(description="The cache type in use.")
    version: int = Field(ge=0, description="The cache version in use (spec.cache.version).")
    reachable: bool | None = Field(default=None, description="Whether Redis answers (Redis and Layered).")
    latency_microseconds: int | None = Field(
        default=None, ge=0, description="Round trip of a PING (refreshed when it moves by more than a quarter)."
    )
    keys: int | None = Field(default=None, ge=0, description="Keys of this version under the pool's prefix.")
    keys_counted_at: str | None = Field(
        default=None, json_schema_extra={"format": "date-time"}, description="When keys was counted."
    )
    removed_keys: int | None = Field(
        default=None, ge=0, description="Entries of other versions removed after the last version change."
    )
    warmed_keys: int | None = Field(
        default=None, ge=0, description="Entries copied from warmUp.fromVersion after the last version change."
    )
    message: str | None = Field(default=None, max_length=1024, description="The last check's outcome, for people.")


class ClusterPoolStatus(Model):
    """What the operator observed."""

    observed_generation: int | None = Field(default=None, ge=0, description="The spec generation the status is about.")
    source: Source | None = Field(default=None, description="Which discovery source the endpoints came from.")
    total: int = Field(default=0, ge=0, description="Number of endpoints in the pool.")
    healthy: int = Field(default=0, ge=0, description="Number of endpoints whose probes pass.")
    eligible: int = Field(default=0, ge=0, description="Number of endpoints clients may use now.")
    ejected: int = Field(default=0, ge=0, description="Number of endpoints ejected (unhealthy or breaker not Closed).")
    active_tier: int = Field(default=0, ge=0, le=9, description="The priority tier that serves traffic now.")
    panic: bool = Field(default=False, description="True while routing to all endpoints of the tier (panic mode).")
    endpoints: list[EndpointStatus] = Field(
        default_factory=list,
        max_length=MAX_ENDPOINTS,
        description="Per-endpoint health.",
        # Atomic, not a map by name: the operator writes the list whole (a merge patch
        # replaces lists anyway), and as a map every field of every entry had its own
        # line in managedFields, which every watcher's copy of the pool carries (at 10
        # endpoints 25 KB of Python objects per pool in kopf's copy; docs/scale.md, round 9).
        json_schema_extra={"x-kubernetes-list-type": "atomic"},
    )
    load: PoolLoadStatus | None = Field(
        default=None,
        description="The engines' load over the serving endpoints, when spec.engine reports load (a coarse "
        "view: written only along with other status changes).",
    )
    cache: CacheStatus | None = Field(default=None, description="The pool's cache, when spec.cache is set.")
    models: list[Annotated[str, Field(max_length=MODEL_NAME_MAX)]] | None = Field(
        default=None,
        max_length=MAX_MODELS,
        description="The models of spec.models this pool serves: those no pool of the namespace created "
        "earlier claims (see the ModelsConflict condition).",
    )
    driven_by: str | None = Field(
        default=None,
        max_length=253,
        description="The operator replica driving the pool (its identity; pools are shared among replicas by Leases).",
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=16,
        description="Ready (at least one healthy endpoint), Degraded (some unhealthy or ejected), "
        "Panic (routing to all endpoints), SpecValid (the spec could be used), CacheReady (the cache answers), "
        "ModelsConflict (a model of spec.models is served by a pool created earlier).",
        json_schema_extra=_list_map("type"),
    )


_CACHE_READY = '.status.conditions[?(@.type=="CacheReady")].status'
PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
    {"name": "Healthy", "type": "integer", "jsonPath": ".status.healthy"},
    {"name": "Total", "type": "integer", "jsonPath": ".status.total"},
    {"name": "Ejected", "type": "integer", "jsonPath": ".status.ejected"},
    {"name": "Strategy", "type": "string", "jsonPath": ".spec.strategy"},
    {"name": "Source", "type": "string", "jsonPath": ".status.source"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    {"name": "Tier", "type": "integer", "jsonPath": ".status.activeTier", "priority": 1},
    {"name": "Panic", "type": "boolean", "jsonPath": ".status.panic", "priority": 1},
    {"name": "Cache", "type": "string", "jsonPath": _CACHE_READY, "priority": 1},
    {"name": "Driven-By", "type": "string", "jsonPath": ".status.drivenBy", "priority": 1},
    # In the wide view: names like meta-llama/Llama-3.1-8B-Instruct, several per pool, would
    # push the default table past a terminal's width; a conflict shows in `describe`.
    {"name": "Models", "type": "string", "jsonPath": ".status.models", "priority": 1},
    # The engines' queue over the serving endpoints, and how old the oldest reading in it is.
    {"name": "Waiting", "type": "integer", "jsonPath": ".status.load.waiting", "priority": 1},
    {"name": "Load-Read", "type": "date", "jsonPath": ".status.load.readAt", "priority": 1},
]


def spec_errors(exc: ValidationError) -> str:
    """One line per problem: `spec.a.b: message`, camelCase paths as in the YAML."""
    parts = []
    for err in exc.errors():
        loc = ".".join(["spec", *(str(p) for p in err["loc"])])
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts)


def parse_spec(raw: dict[str, Any]) -> ClusterPoolSpec:
    return ClusterPoolSpec.model_validate(raw)
