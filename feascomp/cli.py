"""The ``feascomp`` command: train, eval, dump.

User errors print ``file:line:col: error: ...`` and exit with status 2; nothing the user
types produces a Python traceback.
"""
from __future__ import annotations

import argparse
import json
import sys

from .errors import FeascompError

EXIT_USER_ERROR = 2


def _whole_number(minimum: int):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"{text!r} must be at least {minimum}")
        return v

    return parse


_positive = _whole_number(1)
_nonnegative = _whole_number(0)


def _number(check, what: str):
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not check(v):
            raise argparse.ArgumentTypeError(f"{text!r}: {what}")
        return v

    return parse


def _size(text: str) -> int:
    from .resources import parse_size

    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _parser() -> argparse.ArgumentParser:
    from .data import DATASETS
    from .solver import STAGES

    p = argparse.ArgumentParser(prog="feascomp", description="Compile models into projection-based (gradient-free) solvers.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model file by iterated projections")
    t.add_argument("model", help="a .fc model file, or a JAX function as module.py:function")
    t.add_argument("--init", metavar="NAME", help="for module.py:function, the module's parameter initialiser init(seed) "
                   "(default: init_params, or <function>_init)")
    t.add_argument("--dataset", choices=sorted(DATASETS), default="mnist5k")
    t.add_argument("--algorithm", choices=["dr", "ap", "cp", "dm", "sgd", "adam"], default="dr",
                   help="a projection method (dr, ap, cp, dm) or a gradient baseline on the same model (sgd, adam)")
    t.add_argument("--learning-rate", type=_number(lambda v: 0 < v < float("inf"), "must be a positive number"),
                   default=1e-3, metavar="LR", help="sgd/adam learning rate (default 1e-3, the paper's)")
    t.add_argument("--momentum", type=_number(lambda v: 0 <= v < 1, "must lie in [0, 1)"), default=0.0,
                   help="sgd momentum (default 0)")
    t.add_argument("--schedule", choices=["constant", "cosine"], default="constant",
                   help="sgd/adam learning-rate schedule (cosine: decays to 0 over --updates)")
    t.add_argument("--no-identities", action="store_true",
                   help="no identity families: a graph that is not bipartite gets a general colouring (CP only)")
    t.add_argument("--relaxation", type=_number(lambda v: 0 < v <= 1, "DR relaxation must lie in (0, 1]"), default=0.5,
                   help="DR relaxation r in (0, 1] (default 0.5, classic DR)")
    t.add_argument("--beta", type=_number(lambda v: v != 0 and abs(v) < float("inf"), "DM beta must be finite and not 0"),
                   default=1.0, help="Difference Map beta (default 1)")
    t.add_argument("--backend", default="jax", help="jax (default), numpy (the scalar-graph oracle; small models only) or an installed plug-in")
    t.add_argument("--steps-per-batch", type=_positive, default=50, metavar="K", help="projection steps per batch (default 50)")
    t.add_argument("--batch-size", type=_positive, default=256)
    t.add_argument("--updates", type=_positive, default=50, metavar="N", help="batches to train on (default 50)")
    t.add_argument("--seed", type=_nonnegative, default=0)
    t.add_argument("--eval-every", type=_nonnegative, default=10, metavar="N", help="test accuracy every N updates (0: only at the end)")
    t.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    t.add_argument("--weighted", action="store_true", help="exact weighted projections (Theorem 3) instead of the paper's weight 1")
    t.add_argument("--warm-start", action="store_true", help="carry the edge state across batches instead of a forward-pass initialisation")
    t.add_argument("--lowering", choices=["materialized", "collapsed"], default="materialized",
                   help="materialized: every edge stored (the paper); collapsed: AP, DR or DM, dense layers "
                        "keep values and per-node coefficients instead of their edges")
    t.add_argument("--no-fuse-kernels", action="store_true",
                   help="keep XLA's code for DR's (and DM's) dense layers instead of the native fused step "
                        "(same iterates)")
    t.add_argument("--residuals", metavar="FILE.csv", help="write per-step residuals and per-family constraint distances")
    t.add_argument("--save", metavar="PATH", help="write the trained parameters (.npz, atomically)")
    t.add_argument("--max-memory", type=_size, metavar="SIZE",
                   help="refuse a run whose estimated peak memory exceeds SIZE (e.g. 4G; default: the memory available)")
    t.add_argument("--json", action="store_true", help="end with one JSON line of results")
    t.add_argument("--no-progress", action="store_true")

    e = sub.add_parser("eval", help="test accuracy of saved parameters")
    e.add_argument("model")
    e.add_argument("--params", required=True, metavar="PATH")
    e.add_argument("--dataset", choices=sorted(DATASETS), default="mnist5k")
    e.add_argument("--json", action="store_true")

    sub.add_parser("backends", help="list the installed backends")

    pl = sub.add_parser("plot", help="draw residuals and accuracy from a --residuals CSV to PNG")
    pl.add_argument("csv")
    pl.add_argument("-o", "--output", help="PNG path (default: the CSV's name with .png)")

    o = sub.add_parser("opt", help="run a pass pipeline on a model file or IR text and print the result")
    o.add_argument("input", help="a .fc model file or an IR text file (tensor, feasibility or plan)")
    o.add_argument("--passes", default=None, help="pipeline, e.g. 'scalarize{batch=64},fuse-sum-relu,color' (default: the standard pipeline from the input's level)")
    o.add_argument("--emit", choices=STAGES, help="stop once the IR reaches this stage")
    o.add_argument("--batch-size", type=_positive, default=256, help="fills scalarize{batch} when the pipeline does not set it")
    o.add_argument("--print-ir-after-all", action="store_true")
    o.add_argument("--print-ir-after", action="append", default=[], metavar="PASS")
    o.add_argument("--print-ir-after-change", action="store_true")
    o.add_argument("--time-passes", action="store_true")
    o.add_argument("--no-verify", action="store_true")
    o.add_argument("--dump-pipeline", action="store_true", help="print the canonical pipeline string (it parses back) to stderr")
    o.add_argument("--reproducer-dir", default=".", help="where a failing pass writes the IR it received (default .)")

    sub.add_parser("passes", help="list the available passes (built in and plug-ins)")

    d = sub.add_parser("dump", help="print the IR of a compilation stage")
    d.add_argument("model")
    d.add_argument("--stage", choices=STAGES, default="plan")
    d.add_argument("--batch-size", type=_positive, default=256)
    d.add_argument("--no-identities", action="store_true", help="the plan without identity families (general colouring)")
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except KeyboardInterrupt:
        print("feascomp: interrupted", file=sys.stderr)
        return 130
    try:
        commands = {"train": _train, "eval": _eval, "dump": _dump, "backends": _backends, "plot": _plot,
                    "opt": _opt, "passes": _passes}
        return commands[args.command](args)
    except FeascompError as e:
        print(e.render(), file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as e:
        print(f"error: {e.strerror or e}: {e.filename or ''}".rstrip(": "), file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"feascomp {args.command}: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print(f"error: out of memory during feascomp {args.command} (see --max-memory and docs/errors.md)", file=sys.stderr)
        return EXIT_USER_ERROR
    except Exception as e:  # noqa: BLE001 - a bug in feascomp: say so, keep the traceback in a file
        if "RESOURCE_EXHAUSTED" in str(e):  # XLA could not allocate
            print(f"error: out of memory during feascomp {args.command}: {str(e).splitlines()[0]}", file=sys.stderr)
            return EXIT_USER_ERROR
        return _internal_error(args.command, e)


EXIT_INTERNAL_ERROR = 70  # EX_SOFTWARE


def _internal_error(command: str, e: BaseException) -> int:
    """An exception no user input should cause: one message naming it as feascomp's bug and
    where its traceback was written, not the traceback itself."""
    import tempfile
    import traceback

    fd, path = tempfile.mkstemp(prefix="feascomp-crash-", suffix=".txt")
    with open(fd, "w") as fh:
        fh.write(f"feascomp {command}: {' '.join(sys.argv)}\n")
        traceback.print_exception(e, file=fh)
    print(f"internal error (a bug in feascomp, not in your input): {type(e).__name__}: {e}\n"
          f"note: the traceback is in {path}; please report it with the command that caused it", file=sys.stderr)
    return EXIT_INTERNAL_ERROR


def _train(args) -> int:
    from . import data
    from .solver import compile
    from .train import save_params, train

    from . import backends

    backends.load(args.backend)  # an unknown or broken backend is refused before anything else
    for flag, path in (("--save", args.save), ("--residuals", args.residuals)):
        _check_writable(flag, path)
    ds = data.load(args.dataset)
    if args.batch_size > len(ds.x_train):
        raise FeascompError(f"--batch-size {args.batch_size} exceeds the {len(ds.x_train)} training samples of "
                            f"{ds.name!r}")
    options = dict(batch_size=args.batch_size, algorithm=args.algorithm, steps=args.steps_per_batch,
                   dtype=args.dtype, weighted=args.weighted, relaxation=args.relaxation, beta=args.beta,
                   backend=args.backend, warm_start=args.warm_start, monitor=bool(args.residuals),
                   lowering=args.lowering, fuse_kernels=not args.no_fuse_kernels, max_memory=args.max_memory,
                   learning_rate=args.learning_rate, momentum=args.momentum, schedule=args.schedule,
                   decay_steps=args.updates)
    if args.no_identities:
        from .passes import NO_IDENTITIES_PIPELINE

        options["pipeline"] = NO_IDENTITIES_PIPELINE
    if _is_python_model(args.model):
        from .frontends.pymodule import load_function

        fn, params = load_function(args.model, args.init, args.seed)
        solver = compile(fn, params, ds.x_train[0], **options)
    else:
        solver = compile(args.model, **options)
    _check_input(solver, ds, args.model)
    history = [] if args.residuals else None
    params, report = train(
        solver, ds, updates=args.updates, seed=args.seed, eval_every=args.eval_every,
        progress=not args.no_progress and not args.json, history=history,
        on_divergence="nothing was saved" + (f" ({args.save} keeps its previous contents)" if args.save else ""),
    )
    report["model"] = args.model
    if args.residuals:
        from .train import save_history

        save_history(args.residuals, history)
        report["residuals"] = args.residuals
    if args.save:
        save_params(args.save, params, {"model": solver.tensor.name})
        report["saved"] = args.save
    if args.json:
        print(json.dumps(report))
    else:
        print(
            f"{report['algorithm']} on {report['dataset']}: test accuracy {report['test_accuracy']:.4f} "
            f"(train {report['train_accuracy']:.4f}) after {report['updates']} updates x {solver.steps} steps; "
            f"{report['seconds_per_step'] * 1e3:.2f} ms/step, compile {report['compile_seconds']:.1f} s"
        )
    return 0


def _is_python_model(spec: str) -> bool:
    path, sep, name = spec.rpartition(":")
    return bool(sep) and path.endswith(".py") and name.isidentifier()


def _check_input(solver, ds, model):
    """The dataset against the model: sample shape against the input, classes against the
    output's logits (each located at its declaration)."""
    shape = solver.input_shape
    ops = {op.opname: op for op in solver.tensor.ops if op.opname in ("input", "output")}
    if tuple(ds.x_train.shape[1:]) != tuple(shape):
        raise FeascompError(
            f"the model's input has shape {list(shape)} but dataset {ds.name!r} has samples of shape {list(ds.x_train.shape[1:])}",
            ops["input"].loc if "input" in ops else None,
            note=f"in {model}",
        )
    if solver.num_classes != ds.num_classes:
        raise FeascompError(
            f"the model's output has {solver.num_classes} logits but dataset {ds.name!r} has {ds.num_classes} classes",
            ops["output"].loc if "output" in ops else None,
            note=f"in {model}",
        )


def _check_writable(flag: str, path: str | None) -> None:
    """An output path is checked before training, not after it."""
    import os

    if path is None:
        return
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise FeascompError(f"{flag} {path}: is a directory")
    if not os.path.isdir(folder):
        raise FeascompError(f"{flag} {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise FeascompError(f"{flag} {path}: folder {folder} is not writable")


def _eval(args) -> int:
    import numpy as np

    from . import data
    from .solver import compile
    from .train import load_params

    if _is_python_model(args.model):
        from .errors import Loc

        raise FeascompError("eval takes a .fc model file; evaluate a JAX function's parameters from Python "
                            "(solver.accuracy)", Loc(args.model.rpartition(":")[0]))
    solver = compile(args.model, batch_size=1)
    params = load_params(args.params)
    try:
        state = solver.init(params)
    except FeascompError as e:
        from .errors import Loc

        raise FeascompError(f"{e.message} (the parameters do not belong to this model)", Loc(args.params),
                            note=f"model: {args.model}") from None
    ds = data.load(args.dataset)
    _check_input(solver, ds, args.model)
    acc = solver.accuracy(state.params, ds.x_test, ds.y_test)
    if args.json:
        print(json.dumps({"dataset": ds.name, "test_accuracy": acc, "samples": int(len(ds.y_test))}))
    else:
        print(f"test accuracy on {ds.name}: {acc:.4f} ({int(np.round(acc * len(ds.y_test)))}/{len(ds.y_test)})")
    return 0


def _plot(args) -> int:
    from .plot import plot_history

    out = args.output or (args.csv.rsplit(".", 1)[0] + ".png")
    plot_history(args.csv, out)
    print(out)
    return 0


def _load_any(path: str):
    """A .fc model, or IR text of any level."""
    from .frontends.dsl import parse_file, read_source
    from .ir import FeasModule, parse_ir
    from .ir.feasibility import verify as verify_feasibility
    from .ir.tensor import verify as verify_tensor

    if path.endswith(".fc"):
        return parse_file(path)
    module = parse_ir(read_source(path), path)
    # the input is checked whatever --no-verify says (that flag is about the passes' output)
    if isinstance(module, FeasModule):
        verify_feasibility(module)
    else:
        verify_tensor(module)
    return module


def _print_module(module, out) -> None:
    from .ir import FeasModule, print_tensor
    from .ir.text import print_feasibility, print_plan

    if not isinstance(module, FeasModule):
        out.write(print_tensor(module))
    elif any(f.attr("colour") is not None for f in module.families):
        out.write(print_plan(module))
    else:
        out.write(print_feasibility(module, "feasibility"))


def _opt(args) -> int:
    from .ir import FeasModule
    from .passes import DEFAULT_PIPELINE, parse_pipeline, pipeline_text, run_pipeline

    module = _load_any(args.input)
    text = args.passes
    if text is None:
        text = DEFAULT_PIPELINE if not isinstance(module, FeasModule) else ",".join(DEFAULT_PIPELINE.split(",")[1:])
    passes = parse_pipeline(text, batch=args.batch_size)
    if args.emit:
        stages = [getattr(p, "output_stage", None) for p in passes]
        if args.emit == "tensor":
            passes = []
        elif args.emit in stages:
            passes = passes[: len(stages) - stages[::-1].index(args.emit)]
    if args.dump_pipeline:
        print(pipeline_text(passes), file=sys.stderr)
    timings: dict[str, float] = {}
    previous = [str(module)]

    def after(p, m):
        now = str(m)
        show = args.print_ir_after_all or p.name in args.print_ir_after or (args.print_ir_after_change and now != previous[0])
        if show:
            sys.stderr.write(f"// -----// IR Dump After {p.name} //----- //\n")
            _print_module(m, sys.stderr)
        previous[0] = now

    module = run_pipeline(module, passes, verify_each=not args.no_verify, after=after, timings=timings,
                          reproducer_dir=args.reproducer_dir)
    if args.time_passes:
        total = sum(timings.values())
        print("===-------------------------------------------------------------===", file=sys.stderr)
        print("                      ... Pass execution timing report ...", file=sys.stderr)
        print(f"  Total Execution Time: {total:.4f} seconds", file=sys.stderr)
        for name, secs in timings.items():
            print(f"  {secs:10.4f} ({100 * secs / total if total else 0:5.1f}%)  {name}", file=sys.stderr)
    _print_module(module, sys.stdout)
    return 0


def _passes(args) -> int:
    from .passes import available

    for name, cls in sorted(available().items()):
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        print(f"{name:18s} {getattr(cls, 'input_level', '?'):12s} -> {getattr(cls, 'output_stage', '?'):12s} {doc}")
    return 0


def _backends(args) -> int:
    from .backends import available

    for name, spec in sorted(available().items()):
        print(f"{name:10s} {spec}")
    return 0


def _dump(args) -> int:
    from .solver import compile

    from .passes import DEFAULT_PIPELINE, NO_IDENTITIES_PIPELINE

    if args.no_identities:
        solver = compile(args.model, batch_size=args.batch_size, pipeline=NO_IDENTITIES_PIPELINE, algorithm="cp")
    else:
        solver = compile(args.model, batch_size=args.batch_size, pipeline=DEFAULT_PIPELINE)
    sys.stdout.write(solver.dump(args.stage))
    if args.stage == "plan":
        sys.stdout.write(solver.memory_summary())
    return 0


def run() -> None:
    """The console entry point: ``main``, then exit.

    Ctrl-C ends the process at once from a signal handler, with one line and status 130.
    Not by letting KeyboardInterrupt propagate: Python raises it in whatever code runs next,
    and where that was a garbage-collection callback (JAX registers one) the exception was
    printed as "ignored" and lost -- the run went on (found by tests/test_interrupts.py);
    and after it did propagate, tearing the interpreter down under XLA's threads crashed
    the process (signal 11). Writes are atomic (train.atomic_write), so ending at once
    loses nothing that was saved."""
    import os
    import signal

    command = next((a for a in sys.argv[1:] if not a.startswith("-")), "")

    def interrupted(signum, frame):
        os.write(2, f"feascomp{' ' + command if command else ''}: interrupted\n".encode())
        os._exit(130)

    signal.signal(signal.SIGINT, interrupted)
    code = main()
    if code == 130:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    sys.exit(code)


if __name__ == "__main__":
    run()
