"""Who may call what: API keys with scopes, the Host check, per-key rate limits.

- Every route declares a scope in the one route table (``app.ROUTES``); ``public`` routes are
  the explicit exceptions, everything else is denied unless a key with that scope is presented.
  Scopes nest: ``admin`` > ``inference`` > ``read``.
- Keys are stored as SHA-256 digests and compared with ``hmac.compare_digest`` (constant time):
  a keys file leaks no usable key and the comparison leaks no prefix.
- On a loopback bind with no keys configured, local processes are trusted (as Ollama does);
  binding anywhere else without a key is refused at start.
- The Host header must name the address the server is bound to (or a loopback name on a
  loopback bind): a page on a DNS-rebound name cannot reach a local server
  (https://en.wikipedia.org/wiki/DNS_rebinding).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import math
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import tomllib

from ..errors import OficinaError

SCOPES = ("read", "inference", "admin")     # each includes the ones before it
PUBLIC = "public"


class Denied(OficinaError):
    def __init__(self, message: str, status: int, retry_after: int | None = None):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return "ofc-" + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Key:
    id: str
    sha256: str
    scope: str = "admin"

    def allows(self, scope: str) -> bool:
        return scope == PUBLIC or SCOPES.index(self.scope) >= SCOPES.index(scope)


def load_keys(path: Path) -> list[Key]:
    """Keys from a TOML file of ``[[key]]`` tables: ``id``, ``sha256`` (hex digest of the key) and
    ``scope`` (read | inference | admin)."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise OficinaError(f"keys file {path}: {e}") from None
    keys = []
    for i, k in enumerate(data.get("key", [])):
        kid, sha, scope = k.get("id"), k.get("sha256"), k.get("scope", "inference")
        if not isinstance(kid, str) or not isinstance(sha, str) or len(sha) != 64 or scope not in SCOPES:
            raise OficinaError(f"keys file {path}: key {i + 1} needs id, sha256 (64 hex digits) and "
                               f"scope ({' | '.join(SCOPES)})")
        keys.append(Key(kid, sha.lower(), scope))
    return keys


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _host_only(header: str) -> str:
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class RateLimiter:
    """A token bucket per caller: ``per_minute`` requests, bursts up to the same number."""

    def __init__(self, per_minute: float):
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, per_minute)
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, who: str) -> float:
        """0 when allowed, else seconds until a request would be."""
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(who, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - last) * self.rate)
            if tokens >= 1:
                self._buckets[who] = (tokens - 1, now)
                return 0.0
            self._buckets[who] = (tokens, now)
            return (1 - tokens) / self.rate


@dataclass
class Policy:
    bind_host: str = "127.0.0.1"
    keys: list[Key] = field(default_factory=list)
    allowed_hosts: tuple[str, ...] = ()       # extra Host names accepted (e.g. a DNS name)
    cors_origins: tuple[str, ...] = ()
    rate_per_minute: float | None = None

    def __post_init__(self) -> None:
        self.loopback = is_loopback(self.bind_host)
        if not self.loopback and not self.keys:
            raise OficinaError(f"binding to {self.bind_host} exposes the server to the network: "
                               f"give --api-key or --keys FILE (or bind to 127.0.0.1)")
        self.limiter = RateLimiter(self.rate_per_minute) if self.rate_per_minute else None

    def check_host(self, header: str | None) -> None:
        host = _host_only(header or "")
        if host in self.allowed_hosts:
            return
        if self.loopback:
            if is_loopback(host):
                return
        elif self.bind_host in ("0.0.0.0", "::") or host == self.bind_host.lower() or is_loopback(host):
            return
        raise Denied("host not allowed", 403)

    def authorize(self, scope: str, authorization: str | None, client: str) -> Key | None:
        """The key that authorises a call needing ``scope`` (None when none is needed), or
        ``Denied`` (401 no/unknown key, 403 wrong scope, 429 rate limited)."""
        key = None
        if authorization:
            scheme, _, token = authorization.partition(" ")
            presented = digest(token.strip() if scheme.lower() == "bearer" else authorization.strip())
            for k in self.keys:
                if hmac.compare_digest(k.sha256, presented):
                    key = k
        if scope != PUBLIC and self.keys:
            if key is None:
                raise Denied("a valid API key is required (Authorization: Bearer KEY)", 401)
            if not key.allows(scope):
                raise Denied(f"this key's scope is {key.scope}; this route needs {scope}", 403)
        if self.limiter is not None and scope != PUBLIC:
            wait = self.limiter.take(key.id if key else f"ip:{client}")
            if wait > 0:
                raise Denied("rate limit reached; retry later", 429, retry_after=math.ceil(wait))
        return key
