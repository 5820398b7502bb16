"""How fast the web UI's first page renders on loopback, and how much it adds to the package.

Headless Chromium (Debian's) loads ``/ui/#chat`` from a real ``oficina serve`` app on a free
loopback port, N times with a fresh page each time (HTTP cache off); the time is the page's own
``performance.mark("rendered:chat")``, set once the page module has drawn the chat page (options
table and model list fetched), measured from navigation start.

    PYTHONPATH=.:tests python bench/bench_ui.py [--runs 10] [--home DIR]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import ui_helpers as u  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--home", help="an OFICINA_HOME with models (default: a temporary one with tiny models)")
    a = p.parse_args()
    from oficina.serve.app import create_app
    from oficina.serve.native import Server
    from oficina.serve.pool import Pool
    from oficina.ui import STATIC

    tmp = Path(tempfile.mkdtemp(prefix="bench-ui-"))
    home = Path(a.home) if a.home else tmp / "home"
    if not a.home:
        u.registry_with_tiny_models(home)
    files = [f for f in STATIC.rglob("*") if f.is_file()]
    print(f"UI files: {len(files)}, {sum(f.stat().st_size for f in files) / 1024:.1f} KiB "
          f"(limit 1 MiB); no build step, no third-party code")
    with u.Server(create_app(Server(Pool(home)))) as server:
        d = u.chromium(tmp)
        d.execute_cdp_cmd("Network.setCacheDisabled", {"cacheDisabled": True})
        times, loads = [], []
        try:
            for _ in range(a.runs + 1):
                d.get("about:blank")
                d.get(f"{server.url}/ui/#chat")
                end = time.monotonic() + 30
                while not d.execute_script("return performance.getEntriesByName('rendered:chat').length"):
                    if time.monotonic() > end:
                        raise SystemExit("the chat page did not render")
                    time.sleep(0.02)
                times.append(d.execute_script("return performance.getEntriesByName('rendered:chat')[0].startTime"))
                loads.append(d.execute_script("return performance.getEntriesByType('navigation')[0].domContentLoadedEventEnd"))
        finally:
            d.quit()
    times, loads = times[1:], loads[1:]  # the first load warms the server's imports
    q = lambda xs, f: f"{f(xs):.0f}"  # noqa: E731
    print(f"{a.runs} loads of /ui/#chat (cache off): DOMContentLoaded median {q(loads, statistics.median)} ms; "
          f"chat page drawn median {q(times, statistics.median)} ms, max {q(times, max)} ms (goal < 1000 ms)")


if __name__ == "__main__":
    main()
