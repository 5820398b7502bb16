"""Serving: ``oficina serve`` (the HTTP server), ``oficina ps`` (what it has loaded) and
``oficina key`` (make an API key; only its digest is stored)."""

from __future__ import annotations

import json
import os
import signal
import sys
import urllib.error
import urllib.request
from pathlib import Path

from ..errors import OficinaError
from ..registry.registry import default_home
from ..serve import convlog
from ..serve.auth import SCOPES, Key, Policy, digest, load_keys, new_key
from .common import console, human, registry

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 11434


def _address(host: str | None, port: int | None) -> tuple[str, int]:
    """``--host/--port``, else ``OFICINA_HOST`` ("host", "host:port" or "http://host:port", like
    OLLAMA_HOST), else 127.0.0.1:11434."""
    env = os.environ.get("OFICINA_HOST", "")
    env = env.split("://", 1)[-1].rstrip("/")
    env_host, env_port = env, None
    if env.count(":") == 1:
        env_host, p = env.split(":")
        env_port = int(p) if p.isdigit() else None
    return host or env_host or DEFAULT_HOST, port or env_port or DEFAULT_PORT


def _bytes(text: str | None) -> int | None:
    if not text:
        return None
    units = {"k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}
    t = text.strip().lower().removesuffix("b")
    try:
        return int(float(t[:-1]) * units[t[-1]]) if t[-1] in units else int(t)
    except (ValueError, IndexError):
        raise OficinaError(f"--memory must be a size such as 4G or 800M, got {text!r}") from None


def serve(args) -> int:
    import uvicorn

    # here, not at the top: loads torch (`oficina --help` stays light)
    from ..serve.app import create_app
    from ..serve.native import Server
    from ..serve.pool import Pool, parse_keep_alive

    host, port = _address(args.host, args.port)
    keys = load_keys(Path(args.keys)) if args.keys else []
    api_key = args.api_key or os.environ.get("OFICINA_API_KEY")
    if api_key:
        keys.append(Key("cli", digest(api_key), "admin"))
    policy = Policy(host, keys, tuple(args.allow_host or ()), tuple(args.cors_origin or ()), args.rate)
    pool = Pool(keep_alive=parse_keep_alive(args.keep_alive), memory_budget=_bytes(args.memory),
                slots=args.slots, max_queue=args.max_queue)
    # here, not at the top: loads torch (`oficina --help` stays light)
    from ..serve import operate

    ops = operate.from_args(args)
    app = create_app(Server(pool, request_timeout=args.timeout or None), policy, operations=ops)
    names = [e.name for e in registry().list()]
    print(f"oficina serving on http://{host}:{port}  (Ollama API at /api, OpenAI API at /v1)", flush=True)
    print(f"models: {', '.join(n.removesuffix(':latest') for n in names) or 'none yet (oficina pull NAME)'}", flush=True)
    if keys:
        print(f"API keys required: {len(keys)} configured", flush=True)
    print(ops.describe(), flush=True)
    # uvicorn stops on SIGINT/SIGTERM: no new connections, in-flight requests finish (up to the
    # graceful timeout), then the lifespan closes every scheduler. Afterwards it re-raises the
    # signal to the handlers it found; these make that a clean exit 0 instead of a kill.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=30)
    print("stopped", flush=True)
    return 0


def ps(args) -> int:
    from rich.table import Table

    host, port = _address(args.host, args.port)
    req = urllib.request.Request(f"http://{host}:{port}/api/ps")
    key = os.environ.get("OFICINA_API_KEY")
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            models = json.load(r)["models"]
    except urllib.error.HTTPError as e:
        raise OficinaError(f"server at {host}:{port} answered {e.code}: {e.read().decode(errors='replace')[:200]}") from None
    except (urllib.error.URLError, OSError) as e:
        raise OficinaError(f"no server at {host}:{port} ({getattr(e, 'reason', e)}); start one with `oficina serve`") from None
    if args.json:
        print(json.dumps(models, indent=2))
        return 0
    t = Table(box=None, pad_edge=False)
    for col in ("NAME", "ID", "SIZE", "RUNNING", "WAITING", "UNTIL"):
        t.add_column(col)
    for m in models:
        t.add_row(m["name"].removesuffix(":latest"), m.get("digest", "")[:12], human(m.get("size", 0)),
                  str(m.get("running", 0)), str(m.get("waiting", 0)), _until(m.get("expires_at")))
    console().print(t)
    return 0


def _until(stamp: str | None) -> str:
    from datetime import datetime, timezone

    if not stamp or stamp.startswith("0001"):
        return "forever"
    left = (datetime.fromisoformat(stamp.replace("Z", "+00:00")) - datetime.now(timezone.utc)).total_seconds()
    return "now" if left <= 0 else f"{int(left // 60)} minutes from now" if left >= 120 else f"{int(left)} seconds from now"


def key(args) -> int:
    """Make a key, store its SHA-256 digest in the keys file, print the key once."""
    path = Path(args.file)
    existing = load_keys(path) if path.exists() else []
    if any(k.id == args.id for k in existing):
        raise OficinaError(f"{path} already has a key with id {args.id!r}")
    if args.scope not in SCOPES:
        raise OficinaError(f"--scope must be one of {', '.join(SCOPES)}")
    secret = new_key()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(f'\n[[key]]\nid = "{args.id}"\nscope = "{args.scope}"\nsha256 = "{digest(secret)}"\n')
    print(secret)
    print(f"stored {args.id} ({args.scope}) in {path}; the key is shown only now", file=sys.stderr)
    return 0


def register(sub) -> None:
    s = sub.add_parser("serve", help="serve the registry's models over HTTP (Ollama and OpenAI APIs)")
    s.add_argument("--host", help=f"address to bind (default {DEFAULT_HOST}, or OFICINA_HOST)")
    s.add_argument("--port", type=int, help=f"port (default {DEFAULT_PORT})")
    s.add_argument("--api-key", help="require this key (admin scope); also OFICINA_API_KEY")
    s.add_argument("--keys", metavar="FILE", help="TOML file of hashed keys with scopes (oficina key)")
    s.add_argument("--allow-host", action="append", metavar="NAME", help="accept this Host header too")
    s.add_argument("--cors-origin", action="append", metavar="ORIGIN", help="allow browser calls from this origin")
    s.add_argument("--rate", type=float, metavar="N", help="requests per minute per key (429 past it)")
    s.add_argument("--keep-alive", default="5m", help="how long an idle model stays loaded (default 5m)")
    s.add_argument("--memory", metavar="SIZE", help="unload least recently used models past this (e.g. 4G)")
    s.add_argument("--slots", type=int, default=8, help="sequences decoded together per model (default 8)")
    s.add_argument("--max-queue", type=int, default=64, help="requests waiting per model before 503 (default 64)")
    s.add_argument("--timeout", type=float, default=600, help="seconds one generation may take (default 600)")
    _operation_flags(s)
    s.set_defaults(func=serve)

    s = sub.add_parser("ps", help="models the running server has loaded")
    s.add_argument("--host")
    s.add_argument("--port", type=int)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=ps)

    s = sub.add_parser("key", help="make an API key for oficina serve --keys (prints it once)")
    s.add_argument("id", help="a name for the key (shown in logs, never the key)")
    s.add_argument("--scope", default="inference", help="read | inference | admin (default inference)")
    s.add_argument("--file", default=str(default_home() / "keys.toml"), help="keys file (default ~/.oficina/keys.toml)")
    s.set_defaults(func=key)


def _operation_flags(p) -> None:
    """Flags of the operations around serving (``serve/operate.py``); ``serve.convlog`` is light to
    import, the rest of ``serve`` (torch) is imported only when the server starts."""
    g = p.add_argument_group("operations: cache, log, cost")
    g.add_argument("--no-cache", action="store_true", help="answer every request fresh (no response cache)")
    g.add_argument("--cache-size", default="256MB", metavar="SIZE",
                   help="response cache size limit, least recently used answers go first (default 256MB)")
    g.add_argument("--no-log", action="store_true", help="do not keep the conversation log")
    g.add_argument("--log-retention", type=float, default=30.0, metavar="DAYS",
                   help="delete log entries older than this (default 30; 0 = keep all)")
    g.add_argument("--log-redact", default="", metavar="RULES",
                   help=f"redact from logged text: {', '.join((*convlog.REDACTIONS, convlog.REDACT_ALL))} "
                        "(comma-separated; 'prompts' stores no prompt text)")
    g.add_argument("--prices", metavar="FILE", help="price table (default $OFICINA_HOME/prices.toml if present)")
