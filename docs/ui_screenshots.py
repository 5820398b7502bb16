"""Take the README's two web UI screenshots (docs/ui-playground.png, docs/ui-attention.png) with
smollm2, in headless Chromium against a real server on a free loopback port.

    PYTHONPATH=.:tests python docs/ui_screenshots.py [OFICINA_HOME]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import ui_helpers as u  # noqa: E402
from selenium.webdriver.support.ui import Select  # noqa: E402


def main() -> None:
    from oficina.registry.registry import Registry, default_home
    from oficina.serve.app import create_app
    from oficina.serve.native import Server
    from oficina.serve.pool import Pool

    home = Path(sys.argv[1]) if len(sys.argv) > 1 else default_home()
    Registry(home).get("smollm2")
    out = Path(__file__).parent
    with u.Server(create_app(Server(Pool(home)))) as server:
        tmp = Path("/tmp/oficina-ui-shots")
        d = u.chromium(tmp)
        d.set_window_size(1100, 720)
        try:
            d.get(f"{server.url}/ui/#playground")
            time.sleep(2)
            Select(d.find_element("css selector", "select[data-role=model]")).select_by_value("smollm2:latest")
            _until(d, lambda: d.find_element("css selector", "p.summary").get_attribute("data-model") == "smollm2:latest")
            d.execute_script("document.activeElement.blur()")
            d.save_screenshot(str(out / "ui-playground.png"))
            d.get("about:blank")
            d.get(f"{server.url}/ui/#inside/attention")
            _until(d, lambda: d.find_elements("css selector", "svg.heatmap"))
            Select(d.find_element("css selector", "select[data-role=layer]")).select_by_value("3")
            _until(d, lambda: "layer 3 of" in d.find_element("css selector", "main section").text)
            d.set_window_size(1100, 860)
            d.execute_script("document.activeElement.blur()")
            d.save_screenshot(str(out / "ui-attention.png"))
        finally:
            d.quit()


def _until(d, cond, timeout=120):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if cond():
                return
        except Exception:  # the element is being redrawn
            pass
        time.sleep(0.2)
    raise SystemExit("timed out")


if __name__ == "__main__":
    main()
