"""``oficina ui``: open the web UI, starting ``oficina serve`` in the background when nothing
answers on the address yet."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

from ..errors import OficinaError
from ..registry.registry import default_home
from .serve import _address

START_TIMEOUT = 90.0  # seconds for a fresh server to import torch and bind, on a slow machine


def _probe(base: str) -> str:
    """"oficina" when an oficina server with the UI answers at ``base``, "other" when something
    else does, "none" when nothing listens."""
    try:
        with urllib.request.urlopen(base + "/api/options", timeout=2) as r:
            return "oficina" if "options" in json.load(r) else "other"
    except urllib.error.HTTPError as e:
        return "oficina" if e.code in (401, 403) else "other"  # a server with keys: still ours
    except (urllib.error.URLError, OSError, ValueError):
        return "none"


def ui(args) -> int:
    host, port = _address(args.host, args.port)
    base = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    found = _probe(base)
    if found == "other":
        raise OficinaError(f"{host}:{port} is taken by another server (not oficina); "
                           f"give --port or stop it")
    if found == "none":
        log = default_home() / "serve.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            # Its own session: the server outlives this command and the terminal's Ctrl-C.
            proc = subprocess.Popen([sys.executable, "-m", "oficina", "serve", "--host", host, "--port", str(port)],
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        while _probe(base) != "oficina":
            if proc.poll() is not None:
                raise OficinaError(f"oficina serve exited with status {proc.returncode}; see {log}")
            if time.monotonic() > deadline:
                proc.terminate()
                raise OficinaError(f"oficina serve did not answer within {START_TIMEOUT:.0f} s; see {log}")
            time.sleep(0.25)
        print(f"started oficina serve on {host}:{port} (pid {proc.pid}, log {log}); "
              f"`kill {proc.pid}` stops it", flush=True)
    url = f"{base}/ui/"
    print(url, flush=True)
    if not args.no_browser and not os.environ.get("OFICINA_NO_BROWSER"):
        import webbrowser

        if not webbrowser.open(url):
            print("(no browser found here: open the address above)", flush=True)
    return 0


def register(sub) -> None:
    s = sub.add_parser("ui", help="open the web UI (starts oficina serve if it is not running)")
    s.add_argument("--host", help="server address (default 127.0.0.1, or OFICINA_HOST)")
    s.add_argument("--port", type=int, help="port (default 11434)")
    s.add_argument("--no-browser", action="store_true", help="print the address, open nothing")
    s.set_defaults(func=ui)
