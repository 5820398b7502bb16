"""Changing a model's weights: one module per method (``full``, ``lora``, ``qlora``, ``prompt``,
``prefix``, ``ia3``, ``adapter``) registered in ``METHODS``, one shared training loop
(``loop.py``), a recipe (``config.TuneConfig``) and the run that ties them to the registry::

    from oficina.tuning import TuneConfig, tune
    r = tune(TuneConfig(base="smollm2", method="lora", data="facts.jsonl", out="smollm2-facts"))
"""

from .config import TuneConfig
from .method import METHODS, Method, get, load_all, register

__all__ = ["METHODS", "Method", "TuneConfig", "compare", "get", "load_all", "load_tuned", "merge",
           "register", "tune"]


def __getattr__(name):
    # the run pulls in torch and transformers; import it when used
    if name in ("tune", "merge", "load_tuned"):
        from . import run

        return getattr(run, name)
    if name == "compare":
        from .compare import compare

        return compare
    raise AttributeError(f"module 'oficina.tuning' has no attribute {name!r}")
