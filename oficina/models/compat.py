"""Names that moved between transformers releases, in one place.

transformers 5.24 renamed the key/value cache argument and output field ``past_key_values`` to
``cache`` (``@deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")`` on every model's
``forward``): the old name still works but prints a ``FutureWarning`` on every call, and code
that looks for the old name in ``forward``'s signature (ours in ``evaluation/scoring.py``, peft's
prefix tuning on encoders) silently concludes the model has no cache at all. Code asks here
instead of spelling either name, so the next rename is one edit (and the ``.ci/latest`` run,
which installs without the constraints file, is where it shows first).
"""

from __future__ import annotations

import functools
import inspect

NAMES = ("cache", "past_key_values")  # newest first


def cache_arg(module) -> str | None:
    """The keyword ``module.forward`` takes a key/value cache by, or None if it takes none."""
    params = inspect.signature(module.forward).parameters
    return next((n for n in NAMES if n in params), None)


def cache_of(output):
    """The key/value cache a forward call returned (None when it kept none). Read as a field,
    not the deprecated property, which logs a warning of its own."""
    for name in NAMES:
        value = output.get(name) if hasattr(output, "get") else None
        if value is not None:
            return value
    return None


def accept_past_key_values(module) -> None:
    """Let ``module.forward`` also take the old ``past_key_values`` keyword, in its signature.

    peft (0.21) hands prefix-tuning prefixes to an encoder's backbone as ``past_key_values`` and
    refuses the model when the backbone's signature lacks that name ("Model does not support past
    key values which are required for prefix tuning"). The instance's forward is wrapped to take
    it and pass it on under the current name; nothing is saved with the model."""
    new = cache_arg(module)
    if new in (None, "past_key_values"):
        return
    forward = module.forward

    @functools.wraps(forward)
    def with_old_name(*args, past_key_values=None, **kwargs):
        if past_key_values is not None:
            kwargs[new] = past_key_values
        return forward(*args, **kwargs)

    sig = inspect.signature(forward)
    params = list(sig.parameters.values())
    at = next((i for i, p in enumerate(params) if p.kind is p.VAR_KEYWORD), len(params))
    params.insert(at, inspect.Parameter("past_key_values", inspect.Parameter.KEYWORD_ONLY, default=None))
    with_old_name.__signature__ = sig.replace(parameters=params)
    module.forward = with_old_name
