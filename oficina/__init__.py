"""oficina: a local workbench for the whole life of an LLM's weights and parameters.

    import oficina
    m = oficina.load("smollm2")
    m.generate("Why is the sky blue?", temperature=0)
"""

import os as _os

# Before torch loads (its OpenMP runtime reads this once): idle OpenMP threads sleep instead of
# spinning. Decoding one token is ~200 short matrix products; with spinning threads and other
# processes on the same cores, torch decode collapsed to ~1 token/s (issue #12, measured 2.3-2.7x
# better with PASSIVE under load). Set OMP_WAIT_POLICY yourself to override.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

__all__ = ["load", "Options", "Registry", "__version__"]


def __getattr__(name):
    # Lazy, so `import oficina` (and the CLI's --help) does not pay for torch and transformers.
    if name == "load":
        from .api import load

        return load
    if name == "Options":
        from .options import Options

        return Options
    if name == "Registry":
        from .registry.registry import Registry

        return Registry
    raise AttributeError(f"module 'oficina' has no attribute {name!r}")
