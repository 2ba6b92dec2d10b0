"""feascomp: a compiler from neural-network models to projection-based (gradient-free)
training programs. See README.md and docs/."""
from .errors import FeascompError

__version__ = "0.1.0"
__all__ = ["FeascompError", "Solver", "SolverState", "compile", "__version__"]


def __getattr__(name: str):
    # the solver (and with it JAX) is imported on first use, so that `feascomp --help` and
    # the CLI's own error handling are in place before the slow imports run
    if name in ("Solver", "SolverState", "compile"):
        from . import solver

        return getattr(solver, name)
    raise AttributeError(f"module 'feascomp' has no attribute {name!r}")
