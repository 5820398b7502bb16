"""What the browser tests need: tiny models in a registry (one whose every answer is an XSS
attempt), a real HTTP server on a free loopback port, and a headless Chromium.

``serve_app`` is ``oficina serve``'s app with its operations installed."""

from __future__ import annotations

from pathlib import Path

import torch

import tiny
from servers import Uvicorn, free_port  # noqa: F401  (free_port: test_ui.py)

XSS = '<script>window.pwned=1</script><img src=x onerror="window.pwned=2">'


def build_xss_model(folder: Path) -> None:
    """A tiny Llama whose every next token is one added token spelling an XSS attempt: the last
    MLP's bias drives the hidden state along ``u``, and only that token's output row reads ``u``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = tiny.tokenizer()
    tok.add_tokens([XSS])
    target = tok.convert_tokens_to_ids(XSS)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      bos_token_id=0, eos_token_id=1, pad_token_id=2, tie_word_embeddings=False,
                      mlp_bias=True)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    u = torch.randn(64)
    with torch.no_grad():
        model.model.layers[-1].mlp.down_proj.bias.copy_(1000 * u)
        model.lm_head.weight.zero_()
        model.lm_head.weight[target] = u
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)


def registry_with_tiny_models(home: Path) -> None:
    from oficina.registry.registry import Registry
    from oficina.registry.sources import pull

    reg = Registry(home)
    tiny.build("llama", home.parent / "tiny-llama")
    build_xss_model(home.parent / "xss-llama")
    pull(reg, str(home.parent / "tiny-llama"), name="tiny")
    pull(reg, str(home.parent / "xss-llama"), name="xss")


class Server:
    """``servers.Uvicorn`` as a ``with`` block: uvicorn in a thread of the test process, on a free
    loopback port."""

    def __init__(self, app):
        self.app = app

    def __enter__(self):
        self._uv = Uvicorn(self.app)
        self.port, self.url = self._uv.port, self._uv.url
        return self

    def __exit__(self, *_):
        self._uv.stop(10)


def chromium(download_dir: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    o = webdriver.ChromeOptions()
    o.binary_location = "/usr/bin/chromium"
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              "--disable-dev-shm-usage", f"--user-data-dir={download_dir / 'profile'}",
              "--window-size=1280,900"):
        o.add_argument(a)
    o.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=o)
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(download_dir)})
    return driver



def serve_app(home: Path, operations_home: Path | None = None):
    """oficina's server app over ``home``, with its operations (conversation log, metrics, cache)
    as ``oficina serve`` runs them, kept in ``operations_home`` (default ``home``)."""
    from oficina.serve.app import create_app
    from oficina.serve.native import Server
    from oficina.serve.operate import Operations
    from oficina.serve.pool import Pool

    return create_app(Server(Pool(home)), operations=Operations(operations_home or home))
