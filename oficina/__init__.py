"""oficina: a local workbench for the whole life of an LLM's weights and parameters."""

__version__ = "0.1.0"
