"""compile(): a model (file, tensor IR) -> a Solver used like an optax optimizer.

    solver = feascomp.compile("examples/mnist_mlp.fc", batch_size=256, algorithm="dr")
    params = solver.init_params(seed=0)
    state = solver.init(params)
    for x, y in batches:
        params, state, info = solver.update(state, x, y)   # K projection steps, one jitted call
    logits = solver.apply(params, x_test)

The model is compiled once per batch size: the front end and passes run here, the jitted
update is traced on first use (or ahead of time by :meth:`Solver.compile_update`).
"""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

import numpy as np

from .errors import FeascompError
from .ir import FeasModule, TensorModule, print_feasibility, print_tensor
from .ir.text import print_plan
from .ir.tensor import evaluate
from .passes import DEFAULT_PIPELINE, parse_pipeline, run_pipeline
from . import resources
from .gradient import GradientBackend, GradientMethod
from .options import CompileOptions
from .resources import MemoryEstimate

DTYPES = {"float32": np.float32, "float64": np.float64}
STAGES = ("tensor", "feasibility", "plan")
EVAL_CHUNK = 1024  # rows per forward pass in apply/accuracy (Solver.apply)


@dataclasses.dataclass(frozen=True)
class SolverState:
    """What carries over between updates: the current parameters, the update count, with
    ``warm_start`` the edge state (for SGD/Adam: the optimizer's state), and buffers the
    backend writes the next update's edges into. Everything that lives between updates is
    here; the backend keeps nothing."""

    params: dict
    count: int = 0
    edges: Any = None
    buffers: Any = None  # arrays the next update may write into (donated to it; the jax backend's)


def load_model(model) -> TensorModule:
    if isinstance(model, TensorModule):
        return model
    if isinstance(model, (str, os.PathLike)):
        from .frontends.dsl import parse_file

        return parse_file(os.fspath(model))
    raise TypeError(f"cannot compile a {type(model).__name__}; give a .fc path or a TensorModule")


def model_loc(tensor: TensorModule):
    """Where a model as a whole is: the file its first statement came from (line 1), or
    None for a model built in Python."""
    from .errors import Loc, loc_in

    where = next((op.loc for op in tensor.ops if op.loc is not None), None)
    if where is None or not where.file:
        return None
    try:
        with open(where.file, encoding="utf-8-sig") as fh:
            return loc_in(where.file, fh.read(), 1, 1)
    except (OSError, UnicodeDecodeError):
        return Loc(where.file)


def compile(  # noqa: A001  (the public name users expect)
    model,
    params=None,
    example_input=None,
    *,
    loss: str = "cross_entropy",
    in_axes="auto",
    batch_size: int = 256,
    algorithm: str = "dr",
    steps: int = 50,
    dtype: str = "float32",
    weighted: bool = False,
    relaxation: float = 0.5,
    beta: float = 1.0,
    loss_options: dict | None = None,
    pipeline: str = DEFAULT_PIPELINE,
    backend: str = "jax",
    warm_start: bool = False,
    monitor: bool = False,
    elide_inputs: bool = True,
    fold_inputs: bool = True,
    factor_copies: bool = True,
    lowering: str = "materialized",
    fuse_kernels: bool = True,
    max_memory: int | None = None,
    learning_rate: float = 1e-3,
    momentum: float = 0.0,
    schedule: str = "constant",
    decay_steps: int = 1000,
    mesh=None,
    devices: int | None = None,
    edge_dtype: str | None = None,
    outer_step=None,
) -> "Solver":
    """Compile a model into a solver. ``algorithm``: ap, dr (``relaxation`` r), cp, dm
    (``beta``); ``steps``: projection steps per update (K); ``weighted``: exact weighted
    projections (Theorem 3) instead of weight 1; ``backend``: jax or numpy (the scalar-graph
    oracle, small models only) or an installed plug-in; ``warm_start``: carry the edge state
    across batches instead of re-initialising it by a forward pass (Algorithm 1);
    ``monitor``: also report each family's distance to its constraint at every step;
    ``elide_inputs``: under AP (cold start, no monitor) do not store the input's edges,
    which AP always finds equal to the input: the same iterates with less memory traffic,
    the step residual then measured over the stored edges (backends/storage.py, ElidedInputs);
    ``fold_inputs``: under DR and DM (materialized lowering) a product node with the input as
    an operand (the first dense or conv layer) projects with that operand held at the input
    -- the node's constraint becomes a hyperplane and the input's edges are not stored: half
    the first layer's edge state and no root solve there; the iterates differ from the
    unfolded splitting's (backends/storage.py, FoldedInputs; docs/performance.md);
    ``factor_copies``: where the input is folded, keep the layer's copies of its other operand
    as one shared array plus a multiple of the input per node instead of as arrays -- the same
    iterates, a step of two contractions of the layer's size (backends/factored.py; not with
    ``warm_start``, ``monitor`` or 16-bit ``edge_dtype``);
    ``lowering``: ``materialized`` (every edge stored, as in the paper) or ``collapsed``
    (AP, DR or DM, cold start, no monitor, jax backend: dense dot layers keep their
    inputs' values and per-node coefficients instead of their edges; backends/collapsed.py);
    ``fuse_kernels``: under DR (or DM with beta = 1) with the materialized lowering on the
    jax backend, run each dense layer's step on its input edges in native kernels
    (feascomp/kernels) where they build -- the same iterates, several times faster; False
    keeps XLA's code throughout. ``max_memory``: bytes the run may take (its estimated
    peak, :attr:`Solver.memory`, is checked against it and the memory available before
    anything large is allocated; feascomp/resources.py). ``mesh``: the devices to split the
    batch (``data``) and wide layers' units (``model``) over, as ``"data=4"``, ``{"data":
    4}``, a spec or a ``jax.sharding.Mesh``; ``devices``: N devices along the data axis;
    neither: every device JAX sees (docs/distributed.md). ``edge_dtype``: the edge state's
    storage, ``dtype`` (default) or, with float32 arithmetic, ``float16`` or ``bfloat16``
    (every step reads the edges widened and stores them rounded: half the state's memory
    and its traffic; jax backend, materialized lowering). ``outer_step``: ``{param: factor}``
    (or ``"K1=784,c1=2"``): each update moves that parameter by factor times the move the
    projections gave it, ``theta + factor * (consensus - theta)`` (an outer step, as
    Lookahead's; not with ``warm_start`` or a gradient method; docs/experiments.md).

    ``algorithm`` ``sgd`` or ``adam``: the gradient baseline on the same model (optax on
    the model's loss through ``jax.grad``; feascomp/gradient.py), with ``learning_rate``,
    ``momentum`` (SGD), ``schedule`` (``constant`` or ``cosine`` over ``decay_steps``
    updates); one update is one optimizer step.

    ``model`` is a ``.fc`` path, a TensorModule, or a JAX function ``fn(params, x)``; a
    function also needs ``params`` (any pytree; the solver then takes and returns that
    structure) and ``example_input`` (one sample or a batch: see ``in_axes`` in
    feascomp.frontends.jaxpr.trace), and ``loss`` / ``loss_options`` name its loss."""
    names = treedef = None
    if callable(model) and not isinstance(model, TensorModule):
        from .frontends.jaxpr import trace

        if params is None or example_input is None:
            raise FeascompError("compiling a JAX function needs params and example_input")
        try:
            tensor, names, treedef = trace(model, params, example_input, loss=loss, loss_options=loss_options,
                                           in_axes=in_axes)
        except FeascompError:
            raise
        except Exception as e:  # noqa: BLE001 - an error in the user's function while tracing
            from .errors import loc_from_traceback

            raise FeascompError(f"tracing the model function failed: {type(e).__name__}: {e}",
                                loc_from_traceback(e)) from None
        loss_options = None  # now part of the IR
    else:
        tensor = load_model(model)
    options = CompileOptions.make(
        batch_size=batch_size, algorithm=algorithm, steps=steps, dtype=dtype, weighted=weighted, relaxation=relaxation,
        beta=beta, loss_options=loss_options, pipeline=pipeline, backend=backend, warm_start=warm_start,
        monitor=monitor, elide_inputs=elide_inputs, fold_inputs=fold_inputs, factor_copies=factor_copies,
        lowering=lowering, fuse_kernels=fuse_kernels,
        max_memory=max_memory, learning_rate=learning_rate, momentum=momentum, schedule=schedule,
        decay_steps=decay_steps, mesh=mesh, devices=devices, edge_dtype=edge_dtype, outer_step=outer_step)
    solver = compile_tensor(tensor, options)
    if treedef is not None:
        solver.bind_pytree(names, treedef, params)
    return solver


def compile_tensor(tensor: TensorModule, options: CompileOptions) -> "Solver":
    """The tensor IR through the pipeline into a Solver, under ``options``."""
    options.algorithm_object()  # refused options are refused before the pipeline runs
    timings: dict[str, float] = {}
    stages = {"tensor": tensor}

    def record(p, module):
        stages[p.output_stage] = module

    try:
        plan = run_pipeline(tensor, parse_pipeline(options.pipeline, batch=options.batch_size), timings=timings,
                            after=record)
        if not isinstance(plan, FeasModule) or any(f.attr("colour") is None for f in plan.families):
            raise FeascompError(f"pipeline {options.pipeline!r} does not produce a coloured plan")
        return Solver(tensor, plan, options, timings, stages)
    except FeascompError as e:
        if e.loc is None:  # an error of the whole model: name its file
            e.loc = model_loc(tensor)
        raise


class Solver:
    def __init__(self, tensor, plan, options: CompileOptions, timings, stages):
        """The plan lowered under ``options`` (their rules resolved by
        :meth:`CompileOptions.resolve`); use :func:`compile`."""
        from . import backends
        from .backends.lowering import LOWERINGS

        self.tensor: TensorModule = tensor
        self.plan: FeasModule = plan
        self.options = options
        self.stages = stages
        self.dtype = options.dtype
        self.np_dtype = np.dtype(DTYPES[self.dtype])
        self.weighted = options.weighted
        self.loss_options = dict(options.loss_options)
        self.pass_seconds = timings
        self.warm_start = options.warm_start
        self.monitor = options.monitor
        names = [op.result for op in tensor.by_kind("param")]
        unknown = [n for n, _ in options.outer_step if n not in names]
        if unknown:
            raise FeascompError(f"--outer-step names {', '.join(map(repr, unknown))}, not a parameter of this model "
                                f"(its parameters: {', '.join(names)})")
        self.outer_step = dict(options.outer_step)
        colours = len({f.attr("colour") for f in plan.families})
        resolved = options.resolve(colours)
        self.steps = resolved.steps
        self.elide_inputs = resolved.elide_inputs
        self.fold_inputs = resolved.fold_inputs
        self.lowering = resolved.lowering
        gradient = isinstance(resolved.algorithm, GradientMethod)
        # a gradient method reads the plan (its input, its target) through the materialized lowering
        self.program = LOWERINGS["materialized" if gradient else resolved.lowering].lower(plan, resolved, options)
        self.resolved = resolved.with_classes(len(self.program.classes))
        self.algorithm = self.resolved.algorithm
        if len(self.program.consts) != 1:
            inputs = tensor.by_kind("input")
            raise FeascompError(f"a model needs exactly one input, found {len(self.program.consts)}",
                                inputs[1].loc if len(inputs) > 1 else None)
        self.batch_size = int(plan.attr("batch"))
        self.input_name = self.program.consts[0]
        self.input_shape = plan.family(self.input_name).type.shape[1:]
        # token ids (an i32 input read by embed): their dtype, and the rows of the smallest
        # table they index (ids are checked against it before every update)
        self.tokens = plan.family(self.input_name).type.dtype == "i32"
        self.input_dtype = np.dtype(np.int32) if self.tokens else self.np_dtype
        self.vocab = min((tensor.types()[op.operands[1]].shape[0] for op in tensor.by_kind("embed")), default=None)
        self.num_classes = plan.family(self.program.target).port_length("logits")
        # a sequence model's logits are [T, classes]: a label per position
        self.positions = tuple(tensor.types()[tensor.output].shape[:-1])
        itemsize = self.np_dtype.itemsize
        from .backends.lowered import np_dtype

        self.edge_dtype = resolved.edge_dtype  # the edge state's storage (--edge-dtype)
        self.edge_itemsize = edge_itemsize = np_dtype(resolved.edge_dtype).itemsize
        # what carries across updates: the edges under --warm-start, a gradient method's optimizer state
        self.carry = resolved.carry
        self.mesh = resolved.mesh
        self.devices = math.prod(n for _, n in resolved.mesh)
        params_bytes = sum(op.type.size * itemsize for op in tensor.by_kind("param"))
        if gradient:  # the forward values and their gradients, and the optimizer's moments
            values = sum(f.type.size for f in plan.families if f.kind not in ("param", "target")) * itemsize
            self.memory = MemoryEstimate(edge_state=2 * values, params=params_bytes + 2 * params_bytes)
        else:
            self.memory = MemoryEstimate(
                edge_state=sum(self.program.family_state_bytes(edge_itemsize, per_device=True).values()),
                params=params_bytes,
                families=tuple(self.program.family_state_bytes(edge_itemsize).items()),
                devices=self.devices,
                total_edge_state=self.program.state_bytes(edge_itemsize),
                widening=itemsize / edge_itemsize,
            )
        self.max_memory = options.max_memory
        self._memory_checked = False
        from .backends.lowered import Lowered

        self.lowered = Lowered(tensor, plan, self.program, self.algorithm, options, self.resolved, self.input_name,
                               tuple(self.input_shape), self.input_dtype, self.num_classes, self.batch_size, self.tokens,
                               self.positions)
        self.backend = GradientBackend(self.lowered) if gradient else backends.load(options.backend)(self.lowered)
        self._apply = None
        self.param_names = self.treedef = self.example_params = None
        self._sizes: dict[int, Solver] = {}  # this solver at other batch sizes (for_batch)

    def bind_pytree(self, names, treedef, example):
        """Take and return parameters as the user's pytree (the jaxpr front end)."""
        import jax

        self.param_names, self.treedef = names, treedef
        self.example_params = dict(zip(names, (np.asarray(v) for v in jax.tree_util.tree_leaves(example))))

    def _flat(self, params) -> dict:
        if self.treedef is None or (isinstance(params, dict) and set(params) == set(self.param_names or ())):
            return params
        import jax

        leaves = jax.tree_util.tree_leaves(params)
        if len(leaves) != len(self.param_names):
            raise FeascompError(f"expected a parameter pytree with {len(self.param_names)} leaves, got {len(leaves)}")
        return dict(zip(self.param_names, leaves))

    def _tree(self, flat: dict):
        if self.treedef is None:
            return flat
        import jax

        return jax.tree_util.tree_unflatten(self.treedef, [flat[n] for n in self.param_names])

    def precision(self):
        """The JAX precision context of this solver's runs (64-bit mode only for float64)."""
        return self.lowered.precision()

    # parameters --------------------------------------------------------------------------
    def init_params(self, seed: int = 0) -> dict:
        """Parameters drawn by each param's initialiser (NumPy generator, so any backend
        starts from the same point)."""
        if self.example_params is not None:  # a traced function: its parameters as given
            return self._tree({k: v.astype(DTYPES[self.dtype]) for k, v in self.example_params.items()})
        rng = np.random.default_rng(seed)
        out = {}
        for op in self.tensor.by_kind("param"):
            shape, init = op.type.shape, op.attr("init", "zeros")
            # drawn in float64, then cast
            resources.check_param(op.result, shape, 8 + self.np_dtype.itemsize, op.loc)
            # fan-in: every axis but the last (a dense W[in, out]: in; a conv kernel
            # [kh, kw, in, out] (HWIO): kh * kw * in)
            fan_in = int(np.prod(shape[:-1])) if len(shape) > 1 else (shape[0] if shape else 1)
            if init == "zeros":
                v = np.zeros(shape)
            elif init == "he_normal":
                v = rng.normal(size=shape) * np.sqrt(2.0 / fan_in)
            elif init == "normal":
                v = rng.normal(size=shape) / np.sqrt(fan_in)
            else:  # the verifier rejects others
                raise FeascompError(f"unknown initialiser {init!r}")
            out[op.result] = v.astype(DTYPES[self.dtype])
        return out

    def init(self, params) -> SolverState:
        params = self._flat(params)
        self._check_params(params)
        return SolverState({k: np.asarray(v, DTYPES[self.dtype]) for k, v in params.items()}, 0)

    def _check_params(self, params):
        want = {op.result: op.type.shape for op in self.tensor.by_kind("param")}
        if set(params) != set(want):
            raise FeascompError(f"parameters {sorted(params)} do not match the model's {sorted(want)}")
        for k, shape in want.items():
            if tuple(np.shape(params[k])) != shape:
                raise FeascompError(f"parameter {k} has shape {np.shape(params[k])}, the model declares {list(shape)}")

    # the update ---------------------------------------------------------------------------
    def _ids(self, x):
        """Token ids as int32, each checked to name a row of every table it indexes."""
        x = np.asarray(x)
        if x.size and not np.all(np.isfinite(x) & (x == np.round(x))):
            raise FeascompError(f"input {self.input_name} holds token ids (i32), but the data are not integers "
                                "(a float dataset given to an embedding model? use e.g. --dataset digits_tokens)")
        if x.size and (x.min() < 0 or x.max() >= self.vocab):
            raise FeascompError(f"token ids must lie in [0, {self.vocab}) (the embedding table's rows); "
                                f"the data hold {int(x.min())}..{int(x.max())}")
        return x.astype(np.int32)

    def _input(self, x):
        return self._ids(x) if self.tokens else np.asarray(x, DTYPES[self.dtype])

    def _batch(self, x, y):
        dt = DTYPES[self.dtype]
        x = self._input(x)
        if x.shape != (self.batch_size,) + self.input_shape:
            raise FeascompError(
                f"batch has shape {list(x.shape)}; this solver was compiled for "
                f"{[self.batch_size, *self.input_shape]} (compile again for another batch size)"
            )
        y = np.asarray(y)
        indices = (self.batch_size,) + self.positions
        if y.ndim == len(indices) + 1 and y.shape[:-1] == indices and y.shape[-1] != self.num_classes:
            raise FeascompError(f"one-hot labels have {y.shape[-1]} columns; the model has {self.num_classes} logits")
        if y.shape not in (indices, indices + (self.num_classes,)):
            what = f"{self.batch_size} class indices" if not self.positions else \
                f"class indices of shape {list(indices)} (one per position)"
            raise FeascompError(f"labels have shape {list(y.shape)}; this batch needs {what} "
                                f"or one-hot rows of {self.num_classes}")
        if y.shape == indices:
            if y.size and (not np.all(y == np.round(y)) or y.min() < 0 or y.max() >= self.num_classes):
                raise FeascompError(f"labels must be class indices in [0, {self.num_classes}) (the model's "
                                    f"{self.num_classes} logits); the batch holds {y.min()}..{y.max()}")
            onehot = np.eye(self.num_classes, dtype=dt)[y.astype(int)]
        else:
            onehot = y.astype(dt)
        return x, onehot

    def example_batch(self):
        """Zeros shaped like one batch (inputs, one-hot labels), for ahead-of-time compiles."""
        return self.lowered.example_batch()

    def check_memory(self) -> None:
        """Refuse (FeascompError) a run whose estimated peak (:attr:`memory`) exceeds
        ``max_memory`` or the memory available; done once, before the first update
        allocates its state."""
        if not self._memory_checked:
            resources.check(self.memory, self.max_memory, batch_size=self.batch_size, where=model_loc(self.tensor))
            self._memory_checked = True

    def compile_update(self, params=None) -> float:
        """Do the backend's ahead-of-time work (JAX: trace and compile); returns seconds."""
        self.check_memory()
        return self.backend.compile(params if params is not None else self.init_params(0))

    def for_batch(self, n: int) -> "Solver":
        """This solver compiled for batches of ``n`` samples (made once, then cached): the
        same model and options through the pipeline again at ``batch=n``."""
        if n == self.batch_size:
            return self
        if n < 1:
            raise FeascompError("a batch needs at least one sample")
        if n not in self._sizes:
            other = compile_tensor(self.tensor, dataclasses.replace(self.options, batch_size=n))
            if self.treedef is not None:
                other.param_names, other.treedef, other.example_params = self.param_names, self.treedef, self.example_params
            self._sizes[n] = other
        return self._sizes[n]

    def carry_structure(self, params):
        """The pytree (of jax.ShapeDtypeStruct) of what carries between updates for these
        parameters, or None: what a checkpoint's saved carry is restored into."""
        if not self.carry:
            return None
        template = getattr(self.backend, "carry_template", None)
        if template is None:
            raise FeascompError(f"the {self.backend.name} backend cannot restore a carried state (no carry_template)")
        return template(self._flat(params))

    def update(self, state: SolverState, x, y):
        """K projection steps on one batch, from the edges of a forward pass (Algorithm 1).
        Returns (params, state, info); info["residual"] holds one residual per step.

        A batch of another size than ``batch_size`` runs on this solver compiled for that
        size (:meth:`for_batch`, cached, as ``jax.jit`` caches per shape)."""
        n = int(np.shape(x)[0]) if np.ndim(x) else 0
        if n != self.batch_size and np.shape(x)[1:] == self.input_shape:
            if self.warm_start and state.edges is not None:
                raise FeascompError(f"under warm start the edges carried between batches have the shape of a batch of "
                                    f"{self.batch_size}; this batch has {n} samples")
            return self.for_batch(n).update(state, x, y)
        before = self._flat(state.params) if self.outer_step else None  # what the outer step extrapolates from
        x, onehot = self._batch(x, y)
        if self.processes > 1:  # this process's rows of the batch (its devices' share)
            import jax

            rows = self.batch_size // jax.process_count()
            start = jax.process_index() * rows
            x, onehot = x[start : start + rows], onehot[start : start + rows]
        self.check_memory()
        if self.carry:
            params, residuals, edges = self.backend.update(self._flat(state.params), x, onehot, state.edges)
            new = SolverState(params, state.count + 1, edges)
        else:
            given = {"buffers": state.buffers} if state.buffers is not None else {}
            params, residuals, edges = self.backend.update(self._flat(state.params), x, onehot, None, **given)
            buffers = getattr(self.backend, "buffers", None)
            new = SolverState(params, state.count + 1, None, buffers(edges) if buffers is not None else None)
        if self.outer_step:  # theta + factor * (consensus - theta) for the named parameters
            # on the host, in the parameters' dtype (they are small; jax may lack float64 here)
            params = {k: v if k not in self.outer_step else np.asarray(
                np.asarray(before[k]) + self.outer_step[k] * (np.asarray(v) - np.asarray(before[k])), np.asarray(v).dtype)
                for k, v in params.items()}
            new = dataclasses.replace(new, params=params)
        info = {"residual": residuals["step"]}
        if "family" in residuals:
            info["family_residual"] = residuals["family"]
            info["families"] = [f.name for f in self.plan.families]
        return self._tree(params), new, info

    # inference and inspection ------------------------------------------------------------
    def apply(self, params: dict, x, chunk: int = EVAL_CHUNK) -> Any:
        """The model's outputs for the rows of ``x``, computed ``chunk`` rows at a time.

        A forward pass holds every intermediate of its rows at once: Fashion-MNIST's 54,000
        training rows through the 1x32 CNN in one pass peaked at 9.1 GB, in chunks of 1024
        rows at 0.63 GB (docs/results/README.md, Table 3). The last chunk is padded to
        ``chunk`` rows, so one compiled program serves every chunk; inputs of at most
        ``chunk`` rows run as they are. Rows are independent (no primitive mixes samples),
        so chunking does not change the outputs.
        """
        import jax
        import jax.numpy as jnp

        if chunk < 1:
            raise FeascompError(f"apply: chunk must be a positive number of rows, not {chunk}")
        if self._apply is None:
            self._apply = jax.jit(lambda p, x: evaluate(jnp, self.tensor, p, {self.input_name: x}))
        flat, x = self._flat(params), self._input(x)
        n = x.shape[0] if x.ndim else 0
        with self.precision():
            if n <= chunk:
                return self._apply(flat, x)
            parts = []
            for i in range(0, n, chunk):
                part = x[i : i + chunk]
                rows = part.shape[0]
                if rows < chunk:
                    part = np.concatenate([part, np.zeros((chunk - rows,) + part.shape[1:], part.dtype)])
                parts.append(np.asarray(self._apply(flat, part))[:rows])
            return jnp.asarray(np.concatenate(parts))

    def accuracy(self, params: dict, x, y, chunk: int = EVAL_CHUNK) -> float:
        return float(np.mean(np.argmax(np.asarray(self.apply(params, x, chunk)), -1) == np.asarray(y)))

    def dump(self, stage: str = "plan") -> str:
        """The IR text of a stage: tensor, feasibility (before colouring) or plan."""
        if stage not in STAGES:
            raise FeascompError(f"unknown stage {stage!r}; use {', '.join(STAGES)}")
        module = self.stages[stage]
        if stage == "tensor":
            return print_tensor(module)
        if stage == "plan":
            return print_plan(module)
        return print_feasibility(module, "feasibility")

    def memory_summary(self) -> str:
        """The memory estimate as IR comment lines (``feascomp dump --stage plan`` ends with
        them): per family as this lowering stores it, and the run's estimated peak."""
        m = self.memory
        from .backends import mesh as meshes

        on = f" on each of {self.devices} devices ({meshes.spec_text(self.mesh)})" if self.devices > 1 else ""
        lines = [f"// memory at batch {self.batch_size}{on} ({self.algorithm.name}, {self.lowering} lowering, {self.dtype}"
                 f"{'' if self.edge_dtype == self.dtype else f', edges {self.edge_dtype}'}): "
                 f"edge state {m.edge_state} B, XLA temporaries ~{m.temporaries} B, parameters {m.params} B; "
                 f"estimated peak {resources.fmt_bytes(m.peak)}"]
        # how a family is stored where it is not plain edges (backends/storage.py's strategies)
        kinds = {n: f" ({s.kind})" if s.kind != "edges" else "" for n, s in self.program.storage.items()}
        if self.devices == 1:
            lines += [f"//   %{name}: {nbytes} B{kinds[name]}" for name, nbytes in m.families if nbytes]
            return "\n".join(lines) + "\n"
        device = self.program.family_state_bytes(self.edge_itemsize, per_device=True)
        for name, nbytes in m.families:
            if nbytes:
                how = "split along the batch" if device[name] < nbytes else "the same on every device"
                lines.append(f"//   %{name}: {nbytes} B{kinds[name]}, {how}: {device[name]} B per device")
        comm = self.program.communication(self.algorithm, self.np_dtype.itemsize)
        per_step = sum(comm.values())
        lines.append(f"// communicated per step: all-reduces of {per_step} B (each parameter's consensus, a sum over "
                     f"the batch, once per projection of its class; a ring moves 2 (N-1)/N of it per device)")
        lines += [f"//   %{name}: {nbytes} B" for name, nbytes in comm.items()]
        return "\n".join(lines) + "\n"

    @property
    def state_bytes(self) -> int:
        """What the state between projections takes (edges as the lowering stores them; for
        SGD/Adam the forward values and their gradients), over every device."""
        return self.memory.total_edge_state or self.memory.edge_state

    @property
    def device_state_bytes(self) -> int:
        """What one device of the mesh holds of it."""
        return self.memory.edge_state

    @property
    def processes(self) -> int:
        """How many processes share the mesh (``jax.distributed``; 1 without a mesh)."""
        if self.devices == 1:
            return 1
        import jax

        return jax.process_count()

    @property
    def writes(self) -> bool:
        """Whether this process writes results (parameters, checkpoints): process 0 of a
        multi-process run, or the only one."""
        if self.processes == 1:
            return True
        import jax

        return jax.process_index() == 0

    def check_processes(self) -> None:
        """In a multi-process run, refuse (on every process) a model, plan or options that
        differ between the processes."""
        if self.processes == 1:
            return
        import hashlib

        from .backends import mesh as meshes

        text = print_plan(self.plan) + repr(sorted(self.options.as_dict().items()))
        meshes.agree(hashlib.sha256(text.encode()).hexdigest(), "model, plan or options")
