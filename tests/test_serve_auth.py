"""Keys, scopes, the Host check, CORS and rate limits, walking the one route table."""

from __future__ import annotations

import httpx
import ollama
import openai
import pytest

from oficina.errors import OficinaError
from oficina.serve.app import ROUTES
from oficina.serve.auth import PUBLIC, Key, Policy, digest
from servers import Running

ADMIN, INFER, READ = "admin-secret", "infer-secret", "read-secret"
KEYS = [Key("root", digest(ADMIN), "admin"), Key("app", digest(INFER), "inference"), Key("ro", digest(READ), "read")]


@pytest.fixture(scope="module")
def exposed(tmp_path_factory):
    """The policy of a server bound to every interface (uvicorn itself stays on loopback)."""
    s = Running(tmp_path_factory.mktemp("home"), Policy("0.0.0.0", KEYS, rate_per_minute=None))
    yield s
    s.stop()


def _call(url: str, route, key: str | None, host: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if host:
        headers["Host"] = host
    path = route.path.replace("{model:path}", "tiny")
    body = None if route.method in ("GET", "HEAD") else {}
    return httpx.request(route.method, url + path, json=body, headers=headers, timeout=30)


def test_every_route_denies_without_a_key(exposed):
    assert len(ROUTES) >= 19
    for route in ROUTES:
        r = _call(exposed.url, route, None)
        if route.scope == PUBLIC:
            assert r.status_code == 200, route
        else:
            assert r.status_code == 401, (route.method, route.path, r.status_code)
            assert "key" in (r.json()["error"] if route.path.startswith("/api") else r.json()["error"]["message"])
        bad = _call(exposed.url, route, "wrong-key")
        assert bad.status_code == (200 if route.scope == PUBLIC else 401), route


def test_scopes(exposed):
    for route in ROUTES:
        for key, allowed in ((INFER, ("public", "read", "inference")), (READ, ("public", "read"))):
            r = _call(exposed.url, route, key)
            if route.scope in allowed:
                assert r.status_code not in (401, 403), (key, route.path, r.text)   # passes the check
            else:
                assert r.status_code == 403, (key, route.path, r.status_code)


def test_official_clients_send_keys(exposed):
    assert ollama.Client(host=exposed.url, headers={"Authorization": f"Bearer {READ}"}).list().models == []
    with pytest.raises(ollama.ResponseError) as e:
        ollama.Client(host=exposed.url).list()
    assert e.value.status_code == 401
    assert list(openai.OpenAI(base_url=exposed.url + "/v1", api_key=INFER).models.list()) == []
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=exposed.url + "/v1", api_key="nope", max_retries=0).models.list()


def test_non_loopback_bind_needs_keys():
    with pytest.raises(OficinaError, match="api-key"):
        Policy("0.0.0.0")
    Policy("127.0.0.1")                       # loopback with no keys: local processes are trusted


def test_host_header_checked_on_loopback(tmp_path):
    s = Running(tmp_path / "home")
    try:
        version = next(r for r in ROUTES if r.path == "/api/version")
        assert _call(s.url, version, None).status_code == 200
        assert _call(s.url, version, None, host=f"localhost:{s.port}").status_code == 200
        rebound = _call(s.url, version, None, host="attacker.example")
        assert rebound.status_code == 403 and rebound.json() == {"error": "host not allowed"}
        # no CORS unless configured: no Access-Control-Allow-Origin for a foreign origin
        r = httpx.get(s.url + "/api/tags", headers={"Origin": "https://site.example"})
        assert "access-control-allow-origin" not in r.headers
    finally:
        s.stop()


def test_cors_and_rate_limit_when_configured(tmp_path):
    s = Running(tmp_path / "home", Policy("127.0.0.1", [KEYS[1]], cors_origins=("https://app.example",),
                                          rate_per_minute=3))
    try:
        h = {"Authorization": f"Bearer {INFER}", "Origin": "https://app.example"}
        codes = [httpx.get(s.url + "/api/tags", headers=h) for _ in range(4)]
        assert [r.status_code for r in codes] == [200, 200, 200, 429]
        assert codes[0].headers["access-control-allow-origin"] == "https://app.example"
        assert int(codes[3].headers["retry-after"]) >= 1
        assert httpx.get(s.url + "/api/version").status_code == 200     # public: not limited
    finally:
        s.stop()
