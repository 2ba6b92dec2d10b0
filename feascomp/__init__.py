"""feascomp: a compiler from neural-network models to projection-based (gradient-free)
training programs. See README.md and docs/."""
from .errors import FeascompError
from .solver import Solver, SolverState, compile

__version__ = "0.1.0"
__all__ = ["FeascompError", "Solver", "SolverState", "compile", "__version__"]
