"""Backends: lower a plan to something that runs. Chosen by name; third-party backends
register under the entry-point group ``feascomp.backends`` (a class taking a ``Lowered``: backends/lowered.py).

A backend object provides ``compile(params) -> seconds`` (ahead-of-time work, may be 0)
and ``update(params, x, onehot, edges=None) -> (params, residuals, edge state)``: K steps
of the algorithm from ``edges`` (warm start) or a forward-pass initialisation, parameters
read from the shadow point. Optional: ``buffers(edge state)`` (arrays the next cold-start
update may write into, passed back as ``update(..., buffers=...)``: the solver state
carries them) and ``carry_template(params)`` (the carried state's structure, for
checkpoints). It keeps nothing between updates itself.
"""
from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from ..errors import FeascompError

BUILTIN = {
    "jax": "feascomp.backends.jax_backend:JaxBackend",
    "numpy": "feascomp.backends.numpy_backend:NumpyBackend",
}
GROUP = "feascomp.backends"


def available() -> dict[str, str]:
    """name -> 'module:attribute' for the built-in and installed backends."""
    found = dict(BUILTIN)
    for ep in entry_points(group=GROUP):
        found.setdefault(ep.name, ep.value)
    return found


def load(name: str):
    spec = available().get(name)
    if spec is None:
        raise FeascompError(f"unknown backend {name!r}; installed: {', '.join(sorted(available()))}")
    module, _, attr = spec.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise FeascompError(f"backend {name!r} ({spec}) cannot be loaded: {e}") from None
