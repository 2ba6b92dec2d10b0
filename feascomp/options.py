"""Compile options: one frozen :class:`CompileOptions`, and :meth:`CompileOptions.resolve`
which owns every compatibility rule between them (and the plan), giving a specific error
for each refused combination and, for an accepted one, the :class:`Resolved` choices the
solver and its backend are built from. Nothing downstream re-derives a choice from an
option's name."""
from __future__ import annotations

import dataclasses
from typing import Any

from .algorithms import AlternatingProjections, DifferenceMap, DouglasRachford, get_algorithm
from .backends import mesh as meshes
from .backends.lowering import LOWERINGS
from .errors import FeascompError
from .gradient import GradientMethod, check_method
from .passes import DEFAULT_PIPELINE

GRADIENT_METHODS = ("sgd", "adam")
DTYPES = ("float32", "float64")
# how a projection method's edge state may be stored (``edge_dtype``): as the arithmetic's
# dtype, or for float32 arithmetic in a 16-bit type (half the state's memory)
EDGE_DTYPES = ("float32", "float64", "float16", "bfloat16")
NARROW_EDGE_DTYPES = ("float16", "bfloat16")


@dataclasses.dataclass(frozen=True)
class CompileOptions:
    """Everything ``feascomp.compile`` is told, as given (docs/python-api.md)."""

    batch_size: int = 256
    algorithm: str = "dr"
    steps: int = 50
    dtype: str = "float32"
    weighted: bool = False
    relaxation: float = 0.5
    beta: float = 1.0
    loss_options: tuple[tuple[str, Any], ...] = ()  # (name, value) pairs, sorted
    pipeline: str = DEFAULT_PIPELINE
    backend: str = "jax"
    warm_start: bool = False
    monitor: bool = False
    elide_inputs: bool = True
    fold_inputs: bool = True
    factor_copies: bool = True
    lowering: str = "materialized"
    fuse_kernels: bool = True
    max_memory: int | None = None
    learning_rate: float = 1e-3
    momentum: float = 0.0
    schedule: str = "constant"
    decay_steps: int = 1000
    mesh: tuple[tuple[str, int], ...] = ()  # (("data", n), ("model", m)); () and devices None: every device
    devices: int | None = None  # the data axis' size (``--devices N``), when no mesh is given
    edge_dtype: str | None = None  # the edge state's storage dtype; None: ``dtype``
    # (parameter, factor) pairs, sorted: each update moves that parameter by factor times
    # its consensus move (an outer step; 1 for the others, the paper's update)
    outer_step: tuple[tuple[str, float], ...] = ()

    @classmethod
    def make(cls, **kw) -> "CompileOptions":
        if isinstance(kw.get("loss_options"), dict) or kw.get("loss_options") is None:
            kw["loss_options"] = tuple(sorted((kw.get("loss_options") or {}).items()))
        kw["mesh"] = meshes.normalize(kw.get("mesh"))
        kw["outer_step"] = normalize_outer_step(kw.get("outer_step"))
        return cls(**kw)

    def mesh_spec(self) -> tuple:
        """The mesh these options ask for: ``mesh``, else ``devices`` along the data axis,
        else every device JAX sees (the jax backend; one for the others), refused where
        it cannot run."""
        spec = self.mesh
        if self.devices is not None:
            if self.devices < 1:
                raise FeascompError(f"--devices must be at least 1, not {self.devices}")
            n = meshes.size(spec, "data") * meshes.size(spec, "model")
            if spec and n != self.devices:
                raise FeascompError(f"--devices {self.devices} and --mesh {meshes.spec_text(spec)} ({n} devices) disagree")
            spec = spec or (("data", self.devices),)
        if not spec:
            spec = (("data", meshes.device_count() if self.backend == "jax" and not self.gradient else 1),)
        n = meshes.size(spec, "data") * meshes.size(spec, "model")
        if n > 1:
            why = next((w for w, bad in (("the numpy backend runs on one device", self.backend == "numpy"),
                                         (f"{self.algorithm} runs on one device", self.gradient),
                                         ("the jax backend alone runs on a mesh", self.backend != "jax")) if bad), None)
            if why:
                raise FeascompError(f"a mesh of {n} devices ({meshes.spec_text(spec)}) is refused: {why}")
            if n > meshes.device_count():
                raise FeascompError(f"the mesh {meshes.spec_text(spec)} needs {n} devices; JAX sees "
                                    f"{meshes.device_count()} ({meshes.describe_devices()})")
        data = meshes.size(spec, "data")
        if self.batch_size % data:
            raise FeascompError(f"--batch-size {self.batch_size} is not divisible by the mesh's data axis ({data} "
                                f"devices): each device takes an equal share of every batch")
        return spec

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["loss_options"] = dict(self.loss_options)
        return d

    @property
    def gradient(self) -> bool:
        return self.algorithm in GRADIENT_METHODS

    def edge_storage(self) -> str:
        """The dtype the edge state is stored in (``edge_dtype``, default ``dtype``), or the
        reason it is refused."""
        edge = self.edge_dtype or self.dtype
        if edge == self.dtype:
            return edge
        if edge not in EDGE_DTYPES:
            raise FeascompError(f"--edge-dtype must be one of {', '.join(EDGE_DTYPES)}, not {edge!r}")
        why = next((w for w, bad in (
            (f"{' and '.join(NARROW_EDGE_DTYPES)} edges take --dtype float32 arithmetic; other edges are --dtype's",
             edge not in NARROW_EDGE_DTYPES or self.dtype != "float32"),
            (f"{self.algorithm} has no edges", self.gradient),
            ("the jax backend alone stores edges in another dtype", self.backend != "jax"),
            ("the collapsed lowering stores values and coefficients, not edges", self.lowering != "materialized"),
        ) if bad), None)
        if why:
            raise FeascompError(f"--edge-dtype {edge} is refused: {why}")
        return edge

    def algorithm_object(self):
        """The algorithm these options name (before the plan is known): a projection
        method, or a gradient baseline; refused with the reason."""
        if self.dtype not in DTYPES:
            raise FeascompError(f"dtype must be one of {', '.join(DTYPES)}, not {self.dtype!r}")
        if self.steps < 1:
            raise FeascompError("steps per batch must be at least 1")
        if self.gradient:
            options = dict(learning_rate=self.learning_rate, momentum=self.momentum, schedule=self.schedule)
            why = check_method(self.algorithm, options) or next(
                (f"{self.algorithm} {w}" for w, bad in (
                    ("runs on the jax backend", self.backend != "jax"),
                    ("has no lowering but the forward program", self.lowering != "materialized"),
                    ("carries its optimizer's state, not edges (no --warm-start)", self.warm_start),
                    ("has no per-family residuals (no --residuals)", self.monitor),
                    ("has its learning rate, not an outer step (no --outer-step)", self.outer_step)) if bad), None)
            if why:
                raise FeascompError(why)
            return GradientMethod(self.algorithm, decay_steps=self.decay_steps, **options)
        try:
            alg = get_algorithm(self.algorithm, relaxation=self.relaxation, beta=self.beta)
        except ValueError as e:
            raise FeascompError(str(e)) from None
        if self.lowering not in LOWERINGS:
            raise FeascompError(f"lowering must be one of {', '.join(LOWERINGS)}, not {self.lowering!r}")
        if self.outer_step and self.warm_start:
            raise FeascompError("--outer-step scales the parameters an update returns, but under --warm-start the next "
                                "update starts from the carried edges, whose copies would not follow; use one of them")
        return alg

    def resolve(self, colours: int) -> "Resolved":
        """The choices for a plan of ``colours`` colour classes, or a FeascompError
        naming what is refused."""
        alg = self.algorithm_object()
        spec = self.mesh_spec()
        edge_dtype = self.edge_storage()
        if isinstance(alg, GradientMethod):
            return Resolved(alg, steps=1, lowering="jax.grad", elide_inputs=False, fold_inputs=False,
                            factor_copies=False, fuse_order=None,
                            carry=True, schedule="colours", mesh=spec, edge_dtype=edge_dtype)
        two = colours == 2
        why = LOWERINGS[self.lowering].refusals(alg, self, colours)
        if why:
            raise FeascompError(f"the {self.lowering} lowering needs " + ", ".join(why))
        if not alg.uses_layers and not two:
            raise FeascompError(
                f"{alg.name} alternates between two colour classes, but this plan has {colours} colours (its "
                "family graph is not bipartite and identity families are turned off); use --algorithm cp, or keep "
                "insert-identities in the pipeline")
        # AP always finds the input's edges equal to the input: not storing them gives the
        # same iterates (cold start, no monitor: both would read them)
        elide = (self.elide_inputs and type(alg) is AlternatingProjections and two and not self.warm_start
                 and not self.monitor)
        # DR and DM: a product node whose operand is the input projects with it held fixed
        # (backends/storage.py, FoldedInputs); AP's elision already gives its exact iterates
        fold = self.fold_inputs and type(alg) in (DouglasRachford, DifferenceMap) and self.lowering == "materialized"
        # a folded dense or conv layer's copies of its other operand as one shared array plus
        # a multiple of the input per node (backends/factored.py): not under a warm start (a
        # carried coefficient would multiply the next batch's input), monitoring (its
        # per-family distances read edges) or 16-bit edges
        factor = fold and self.factor_copies and not self.warm_start and not self.monitor and edge_dtype == self.dtype
        fuse_order = None
        # the native kernels split the batch across devices, not a layer's units
        if self.lowering == "materialized" and self.fuse_kernels and self.backend == "jax" and \
                meshes.size(spec, "model") == 1:
            fuse_order = FUSE_ORDER.get(type(alg), lambda a: None)(alg)
        return Resolved(alg, steps=self.steps, lowering=self.lowering, elide_inputs=elide, fold_inputs=fold,
                        factor_copies=factor, fuse_order=fuse_order, carry=self.warm_start,
                        schedule="layers" if alg.uses_layers else "colours", mesh=spec, edge_dtype=edge_dtype)


def normalize_outer_step(value) -> tuple[tuple[str, float], ...]:
    """``outer_step`` as sorted (parameter, factor) pairs: from a dict, pairs, or text
    ``"K1=784,c1=2"``; every factor a finite positive number."""
    if not value:
        return ()
    if isinstance(value, str):
        pairs = []
        for part in (p.strip() for p in value.split(",")):
            name, eq, factor = part.partition("=")
            if not eq or not name.strip():
                raise FeascompError(f"--outer-step takes PARAM=FACTOR[,PARAM=FACTOR...], not {value!r}")
            try:
                pairs.append((name.strip(), float(factor)))
            except ValueError:
                raise FeascompError(f"--outer-step {part!r}: {factor.strip()!r} is not a number") from None
    else:
        pairs = list(value.items() if isinstance(value, dict) else value)
    out = {}
    for name, factor in pairs:
        if name in out:
            raise FeascompError(f"--outer-step names parameter {name!r} twice")
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not 0 < float(factor) < float("inf"):
            raise FeascompError(f"--outer-step {name}: the factor must be a finite positive number, not {factor!r}")
        out[str(name)] = float(factor)
    return tuple(sorted(out.items()))


# The class order of the native fused DR step, by algorithm type: DR projects onto P0 then
# reflects through P1; DM with beta = 1 is DR with r = 1/2 through P1 first.
FUSE_ORDER = {
    DouglasRachford: lambda alg: (0, 1),
    DifferenceMap: lambda alg: (1, 0) if alg.beta == 1.0 else None,
}


@dataclasses.dataclass(frozen=True)
class Resolved:
    """What the options come to for one plan."""

    algorithm: Any  # the algorithm object (classes filled in for CP), or a GradientMethod
    steps: int  # projection steps per update (1 for a gradient method)
    lowering: str  # "materialized", "collapsed" or "jax.grad"
    elide_inputs: bool  # AP does not store the input's edges
    fold_inputs: bool  # DR, DM: product nodes project with the input operand held fixed
    factor_copies: bool  # folded products keep their other operand's copies as C + alpha x
    fuse_order: tuple[int, int] | None  # the fused DR step's class order, or None: no fused step
    carry: bool  # something carries between updates (edges under warm start, an optimizer's state)
    schedule: str  # "colours" (AP, DR, DM) or "layers" (CP)
    mesh: tuple = (("data", 1),)  # the device mesh's spec (backends/mesh.py)
    edge_dtype: str = "float32"  # the edge state's storage dtype (arithmetic in the algorithm's dtype)

    def with_classes(self, classes: int) -> "Resolved":
        """CP cycles through the plan's backward-BFS layers: how many, once the lowering
        has computed them."""
        if self.schedule != "layers":
            return self
        return dataclasses.replace(self, algorithm=dataclasses.replace(self.algorithm, classes=classes))
