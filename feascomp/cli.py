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


def _outer_step(text: str) -> tuple:
    from .options import normalize_outer_step

    try:
        return normalize_outer_step(text)
    except FeascompError as e:
        raise argparse.ArgumentTypeError(e.message.removeprefix("--outer-step ")) from None


def _size(text: str) -> int:
    from .resources import parse_size

    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _seed_list(text: str) -> list[int]:
    seeds = [_nonnegative(part.strip()) for part in text.split(",") if part.strip()]
    if not seeds:
        raise argparse.ArgumentTypeError(f"{text!r} names no seeds (e.g. 0,1,2)")
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"{text!r} repeats a seed")
    return seeds


def _data_options(p) -> None:
    from .data import DATASETS, SEQ_LEN

    p.add_argument("--dataset", choices=sorted(DATASETS), default="mnist5k",
                   help="mnist5k, digits, digits_tokens (shipped with packages); fashion-mnist (Debian's "
                        "dataset-fashion-mnist, or --data DIR), mnist (--data DIR of IDX files), cifar10 (--data DIR of "
                        "python batches), higgs (--data HIGGS.csv[.gz]), text (--data FILE, any UTF-8 text)")
    p.add_argument("--data", metavar="PATH", help="the file or folder a dataset is read from")
    p.add_argument("--validation", type=_number(lambda v: 0 <= v < 1, "must lie in [0, 1)"), default=0.1,
                   metavar="F", help="share of the training samples held out for validation (default 0.1; 0: "
                                     "evaluate on test)")
    p.add_argument("--seq-len", type=_positive, default=SEQ_LEN, metavar="T", help=f"text: characters per sequence (default {SEQ_LEN})")
    p.add_argument("--data-limit", type=_positive, metavar="ROWS", help="higgs: read at most this many rows")


def _load_data(args):
    from . import data

    return data.load(args.dataset, args.data, validation=args.validation, seq_len=args.seq_len, limit=args.data_limit)


def _parser() -> argparse.ArgumentParser:
    from .options import EDGE_DTYPES
    from .solver import STAGES

    p = argparse.ArgumentParser(prog="feascomp", description="Compile models into projection-based (gradient-free) solvers.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model file by iterated projections")
    t.add_argument("model", help="a .fc model file, or a JAX function as module.py:function")
    t.add_argument("--init", metavar="NAME", help="for module.py:function, the module's parameter initialiser init(seed) "
                   "(default: init_params, or <function>_init)")
    _data_options(t)
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
    t.add_argument("--seeds", type=_seed_list, metavar="S,S,...",
                   help="one run per seed (e.g. 0,1,2), reported one by one and as mean and standard deviation")
    t.add_argument("--eval-every", type=_nonnegative, metavar="N",
                   help="validation accuracy every N updates (0: only at the end; default 10, or 1 with "
                        "--target-accuracy, so the time to the target is known to an update); the best evaluation's "
                        "parameters are reported on test and saved")
    t.add_argument("--patience", type=_positive, metavar="E",
                   help="early stopping: stop after E evaluations without a better validation accuracy")
    t.add_argument("--target-accuracy", type=_number(lambda v: 0 < v <= 1, "must lie in (0, 1]"), metavar="A",
                   help="stop at the first evaluation whose validation accuracy reaches A; report seconds_to_target "
                        "(training time only) and steps_to_target")
    t.add_argument("--max-seconds", type=_number(lambda v: 0 < v < float("inf"), "must be a positive number"),
                   metavar="S", help="a time budget: stop once the training time (updates only) reaches S seconds")
    t.add_argument("--checkpoint", metavar="DIR",
                   help="keep the latest checkpoint in DIR (per seed: DIR/seed-S); the same command resumes from it; "
                        "Ctrl-C writes one and exits 130")
    t.add_argument("--checkpoint-every", type=_positive, metavar="N", help="checkpoint every N updates (default: at each evaluation)")
    t.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    t.add_argument("--edge-dtype", choices=EDGE_DTYPES, metavar="DTYPE",
                   help="store the edge state in float16 or bfloat16 (arithmetic in float32): half its memory; "
                        "float16 keeps DR's accuracy, bfloat16 does not (default: --dtype; docs/performance.md)")
    t.add_argument("--weighted", action="store_true", help="exact weighted projections (Theorem 3) instead of the paper's weight 1")
    t.add_argument("--warm-start", action="store_true", help="carry the edge state across batches instead of a forward-pass initialisation")
    t.add_argument("--outer-step", type=_outer_step, metavar="PARAM=F[,...]",
                   help="an outer step: each update moves PARAM by F times the move the projections gave it "
                        "(e.g. K1=784 for a 3x3 kernel shared over 28x28 positions; docs/experiments.md)")
    t.add_argument("--lowering", choices=["materialized", "collapsed"], default="materialized",
                   help="materialized: every edge stored (the paper); collapsed: AP, DR or DM, dense layers "
                        "keep values and per-node coefficients instead of their edges")
    t.add_argument("--no-fuse-kernels", action="store_true",
                   help="keep XLA's code for DR's (and DM's) dense layers instead of the native fused step "
                        "(same iterates)")
    t.add_argument("--no-fold-inputs", action="store_true",
                   help="under DR and DM keep the input's edges as variables of the first layer's products "
                        "(the paper's splitting) instead of holding them at the input (the default: half the "
                        "first layer's edge state, a closed-form projection; docs/performance.md)")
    t.add_argument("--no-factor-copies", action="store_true",
                   help="where the input is folded, store the layer's copies of its other operand as arrays "
                        "instead of one shared array plus a multiple of the input per node (same iterates; "
                        "backends/factored.py)")
    t.add_argument("--residuals", metavar="FILE.csv", help="write per-step residuals and per-family constraint distances")
    t.add_argument("--devices", type=_whole_number(1), metavar="N",
                   help="split each batch over N devices (default: every device JAX sees; docs/distributed.md)")
    t.add_argument("--mesh", metavar="SPEC", help="the device mesh, data=N[,model=M]: the batch over N devices, "
                   "wide dense layers' units over M")
    t.add_argument("--coordinator", metavar="HOST:PORT", help="a multi-process run: process 0's address")
    t.add_argument("--num-processes", type=_whole_number(1), metavar="P", help="a multi-process run: how many")
    t.add_argument("--process-id", type=_whole_number(0), metavar="I", help="a multi-process run: this one's id")
    t.add_argument("--init-timeout", type=_whole_number(1), default=300, metavar="SECONDS",
                   help="how long to wait for the other processes (default 300)")
    t.add_argument("--save", metavar="PATH", help="write the trained parameters (.npz, atomically)")
    t.add_argument("--max-memory", type=_size, metavar="SIZE",
                   help="refuse a run whose estimated peak memory exceeds SIZE (e.g. 4G; default: the memory available)")
    t.add_argument("--json", action="store_true", help="end with one JSON line of results")
    t.add_argument("--no-progress", action="store_true")

    e = sub.add_parser("eval", help="test accuracy of saved parameters")
    e.add_argument("model")
    e.add_argument("--params", required=True, metavar="PATH")
    _data_options(e)
    e.add_argument("--json", action="store_true")

    sm = sub.add_parser("sample", help="generate text from a character model's saved parameters")
    sm.add_argument("model")
    sm.add_argument("--params", required=True, metavar="PATH", help="parameters saved by train --save on the text dataset")
    sm.add_argument("--prompt", default="\n", help="the text to continue (default: a newline)")
    sm.add_argument("--length", type=_positive, default=200, metavar="N", help="characters to generate (default 200)")
    sm.add_argument("--temperature", type=_number(lambda v: v > 0, "must be positive"), default=1.0, metavar="T",
                    help="divide the logits by T before sampling (default 1)")
    sm.add_argument("--greedy", action="store_true", help="take the most likely character at each step")
    sm.add_argument("--seed", type=_nonnegative, default=0)

    b = sub.add_parser("bench", help="run a grid of training runs from a TOML/JSON spec; write the paper's tables and figures")
    b.add_argument("spec", help="a .toml or .json bench spec (see docs/experiments.md)")
    b.add_argument("--out", metavar="DIR", help="where runs.jsonl, table.md/.csv, results.json and the PNGs go "
                                                "(default: the spec's name beside it); runs already there are kept")
    b.add_argument("--dry-run", action="store_true", help="print the commands of the grid and stop")
    b.add_argument("--tables-only", action="store_true",
                   help="run nothing: write the tables and figures of the runs already in --out, listing the "
                        "grid's others as not run yet")
    b.add_argument("--no-progress", action="store_true")

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
    d.add_argument("--algorithm", choices=["ap", "dr", "cp", "dm"], default="dr",
                   help="the algorithm and lowering the memory and communication notes are for")
    d.add_argument("--lowering", choices=["materialized", "collapsed"], default="materialized")
    d.add_argument("--edge-dtype", choices=EDGE_DTYPES, metavar="DTYPE",
                   help="the memory notes for edges stored in this dtype (as train --edge-dtype)")
    d.add_argument("--devices", type=_whole_number(1), metavar="N", help="the notes for a batch split over N devices")
    d.add_argument("--mesh", metavar="SPEC", help="the notes for a mesh data=N[,model=M]")
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except KeyboardInterrupt:
        print("feascomp: interrupted", file=sys.stderr)
        return 130
    from .train import Interrupted

    try:
        commands = {"train": _train, "bench": _bench, "eval": _eval, "sample": _sample, "dump": _dump, "backends": _backends, "plot": _plot,
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
    except Interrupted as e:
        print(f"feascomp {args.command}: {e.message}", file=sys.stderr)
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


def _eval_every(args) -> int:
    """--eval-every, or its default: every update when a target accuracy is asked for
    (evaluation is not training time, and the time to the target is then exact to an update
    rather than to ten), else every 10."""
    if args.eval_every is not None:
        return args.eval_every
    return 1 if args.target_accuracy is not None else 10


def _train(args) -> int:
    import os
    import threading

    from . import backends

    backends.load(args.backend)  # an unknown or broken backend is refused before anything else
    if args.mesh is not None:
        from .backends import mesh as meshes

        args.mesh = meshes.parse(args.mesh)
    if (args.coordinator, args.num_processes, args.process_id) != (None, None, None):
        from .backends import mesh as meshes

        meshes.initialize(args.coordinator, args.num_processes, args.process_id, args.init_timeout)
    for flag, path in (("--save", args.save), ("--residuals", args.residuals)):
        _check_writable(flag, path)
    if args.checkpoint and os.path.exists(args.checkpoint) and not os.path.isdir(args.checkpoint):
        raise FeascompError(f"--checkpoint {args.checkpoint}: not a folder")
    if args.checkpoint:
        _check_writable("--checkpoint", os.path.join(args.checkpoint, "checkpoint.npz")
                        if os.path.isdir(args.checkpoint) else args.checkpoint)
    ds = _load_data(args)
    if args.batch_size > len(ds.x_train):
        held = f" (with {len(ds.x_val)} held out for validation)" if ds.x_val is not None else ""
        raise FeascompError(f"--batch-size {args.batch_size} exceeds the {len(ds.x_train)} training samples of "
                            f"{ds.name!r}{held}")
    solver = _compile_for(args, ds)
    _check_input(solver, ds, args.model)
    solver.check_processes()
    if solver.processes > 1 and args.checkpoint and solver.carry:
        raise FeascompError("--checkpoint with a carried state (--warm-start, SGD/Adam) runs in one process: the "
                            "carried state of a multi-process run spans the processes' devices")
    stop = threading.Event()
    _INTERRUPT["event"] = stop if args.checkpoint else None
    seeds = args.seeds or [args.seed]
    reports = []
    for seed in seeds:
        reports.append(_train_one(args, solver, ds, seed, stop, multi=len(seeds) > 1))
    if len(seeds) > 1:
        summary = aggregate(reports)
        if args.json:
            print(json.dumps(summary))
        else:
            print(_summary_line(summary, len(seeds)))
    return 0


def _compile_for(args, ds):
    from .solver import compile

    options = dict(batch_size=args.batch_size, algorithm=args.algorithm, steps=args.steps_per_batch,
                   dtype=args.dtype, weighted=args.weighted, relaxation=args.relaxation, beta=args.beta,
                   backend=args.backend, warm_start=args.warm_start, monitor=bool(args.residuals),
                   lowering=args.lowering, fuse_kernels=not args.no_fuse_kernels,
                   fold_inputs=not args.no_fold_inputs, factor_copies=not args.no_factor_copies,
                   max_memory=args.max_memory,
                   learning_rate=args.learning_rate, momentum=args.momentum, schedule=args.schedule,
                   decay_steps=args.updates, mesh=args.mesh, devices=args.devices, edge_dtype=args.edge_dtype,
                   outer_step=args.outer_step)
    if args.no_identities:
        from .passes import NO_IDENTITIES_PIPELINE

        options["pipeline"] = NO_IDENTITIES_PIPELINE
    if _is_python_model(args.model):
        from .frontends.pymodule import load_function

        fn, params = load_function(args.model, args.init, args.seed)
        return compile(fn, params, ds.x_train[0], **options)
    return compile(args.model, **options)


def _train_one(args, solver, ds, seed, stop, multi) -> dict:
    import os

    from .train import save_history, save_params, train

    def per_seed(path):
        if not (path and multi):
            return path
        root, ext = os.path.splitext(path)
        return f"{root}-seed{seed}{ext}"

    save, residuals = per_seed(args.save), per_seed(args.residuals)
    history = [] if residuals else None
    params, report = train(
        solver, ds, updates=args.updates, seed=seed, eval_every=_eval_every(args),
        progress=not args.no_progress and (not args.json or sys.stderr.isatty()), history=history,
        patience=args.patience,
        target_accuracy=args.target_accuracy, stop=stop, max_seconds=args.max_seconds,
        checkpoint=os.path.join(args.checkpoint, f"seed-{seed}") if args.checkpoint else None,
        checkpoint_every=args.checkpoint_every,
        on_divergence="nothing was saved" + (f" ({save} keeps its previous contents)" if save else ""),
    )
    report["model"] = args.model
    if not solver.writes:  # a multi-process run: process 0 writes the results
        save = residuals = None
    if residuals:
        save_history(residuals, history)
        report["residuals"] = residuals
    if save:
        meta = {"model": solver.tensor.name}
        if ds.vocabulary is not None:
            meta["vocabulary"] = ds.vocabulary
        save_params(save, params, meta)
        report["saved"] = save
    if args.json:
        print(json.dumps(report), flush=True)
    else:
        line = (f"{report['algorithm']} on {report['dataset']} (seed {seed}): test accuracy {report['test_accuracy']:.4f} "
                f"(train {report['train_accuracy']:.4f}; the majority {'character' if ds.vocabulary else 'class'} "
                f"{report['majority_accuracy']:.4f}) after {report['updates']} updates x {solver.steps} steps")
        if report["evaluated_on"] == "validation" and report.get("best_validation_accuracy") is not None:
            line += f"; best validation {report['best_validation_accuracy']:.4f} at update {report['best_update']}"
        if "seconds_to_target" in report:
            line += f"; target reached in {report['seconds_to_target']:.2f} s ({report['steps_to_target']} steps)"
        elif args.target_accuracy is not None:
            line += f"; target {args.target_accuracy} not reached"
        if report["stopped"] in ("patience", "time"):
            line += f"; stopped early ({report['stopped']})"
        print(line + f"; {report['seconds_per_step'] * 1e3:.2f} ms/step, compile {report['compile_seconds']:.1f} s",
              flush=True)
    return report


SUMMARISED = ("test_accuracy", "train_accuracy", "best_validation_accuracy", "steps_to_best", "seconds_to_best",
              "seconds_per_step", "steps_to_target", "seconds_to_target", "updates", "training_seconds")


def aggregate(reports: list[dict]) -> dict:
    """Mean and standard deviation (population, as numpy's default) over runs of the
    numeric fields; ``reached_target``: how many runs reached it."""
    import numpy as np

    out = {"runs": len(reports), "seeds": [r["seed"] for r in reports]}
    for key in ("algorithm", "dataset", "model", "lowering", "batch_size", "steps_per_batch", "evaluated_on"):
        out[key] = reports[0].get(key)
    for key in SUMMARISED:
        values = [r[key] for r in reports if r.get(key) is not None]
        if values:
            out[key] = {"mean": float(np.mean(values)), "std": float(np.std(values)), "n": len(values)}
    if any("seconds_to_target" in r for r in reports) or any(r.get("stopped") == "target" for r in reports):
        out["reached_target"] = sum("seconds_to_target" in r for r in reports)
    return out


def _summary_line(s: dict, n: int) -> str:
    def pm(key, scale=1.0, fmt=".4f"):
        v = s.get(key)
        return "n/a" if v is None else f"{v['mean'] * scale:{fmt}} ± {v['std'] * scale:{fmt}}"

    return (f"{s['algorithm']} on {s['dataset']} over {n} seeds: test accuracy {pm('test_accuracy')}, "
            f"{pm('seconds_per_step', 1e3, '.2f')} ms/step")


def _bench(args) -> int:
    import os

    from .bench import load_spec, run_bench

    spec = load_spec(args.spec)
    out = args.out or os.path.splitext(args.spec)[0]
    if os.path.exists(out) and not os.path.isdir(out):
        raise FeascompError(f"--out {out}: not a folder")
    summary = run_bench(spec, out, progress=not args.no_progress, dry_run=args.dry_run, tables_only=args.tables_only)
    if summary:
        with open(os.path.join(out, "table.md"), encoding="utf-8") as fh:
            print(fh.read(), end="")
        failed = sum(r["failed"] for r in summary["rows"])
        if failed:
            print(f"feascomp bench: {failed} runs failed (their errors are in {out}/runs.jsonl)", file=sys.stderr)
            return 1
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

    from .solver import compile
    from .train import load_params

    if _is_python_model(args.model):
        from .errors import Loc

        raise FeascompError("eval takes a .fc model file; evaluate a JAX function's parameters from Python "
                            "(solver.accuracy)", Loc(args.model.rpartition(":")[0]))
    solver = compile(args.model, batch_size=1)
    state = _init_saved(solver, args, load_params(args.params))
    ds = _load_data(args)
    _check_input(solver, ds, args.model)
    acc = solver.accuracy(state.params, ds.x_test, ds.y_test)
    if args.json:
        print(json.dumps({"dataset": ds.name, "test_accuracy": acc, "samples": int(len(ds.y_test))}))
    else:
        print(f"test accuracy on {ds.name}: {acc:.4f} ({int(np.round(acc * len(ds.y_test)))}/{len(ds.y_test)})")
    return 0


def _sample(args) -> int:
    from .errors import Loc
    from .sample import load_vocabulary, sample
    from .solver import compile, model_loc
    from .train import load_params

    if _is_python_model(args.model):
        raise FeascompError("sample takes a .fc model file", Loc(args.model.rpartition(":")[0]))
    solver = compile(args.model, batch_size=1)
    if len(solver.input_shape) != 1 or not solver.tokens or len(solver.positions) != 1:
        raise FeascompError("sample needs a character model: token ids in (input x : i32[T]) and logits at every "
                            f"position out ([T, classes]); this model takes {list(solver.input_shape)} and gives "
                            f"{[*solver.positions, solver.num_classes]}", model_loc(solver.tensor))
    state = _init_saved(solver, args, load_params(args.params))
    vocabulary = load_vocabulary(args.params)
    if len(vocabulary) != solver.num_classes:
        raise FeascompError(f"the saved vocabulary has {len(vocabulary)} characters; the model predicts "
                            f"{solver.num_classes}", Loc(args.params))
    text = sample(solver, state.params, vocabulary, args.prompt, args.length, temperature=args.temperature,
                  greedy=args.greedy, seed=args.seed)
    sys.stdout.write(args.prompt + text + "\n")
    return 0


def _init_saved(solver, args, params):
    """The solver's state on parameters read from ``args.params``: a located error where
    they do not fit the model."""
    from .errors import Loc

    try:
        return solver.init(params)
    except FeascompError as e:
        raise FeascompError(f"{e.message} (the parameters do not belong to this model)", Loc(args.params),
                            note=f"model: {args.model}") from None


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

    from .backends import mesh as meshes

    kw = dict(batch_size=args.batch_size, algorithm=args.algorithm, lowering=args.lowering, devices=args.devices,
              mesh=meshes.parse(args.mesh) if args.mesh else None, edge_dtype=args.edge_dtype)
    if args.no_identities:
        solver = compile(args.model, pipeline=NO_IDENTITIES_PIPELINE, **{**kw, "algorithm": "cp"})
    else:
        solver = compile(args.model, pipeline=DEFAULT_PIPELINE, **kw)
    sys.stdout.write(solver.dump(args.stage))
    if args.stage == "plan":
        sys.stdout.write(solver.memory_summary())
    return 0


_INTERRUPT: dict = {"event": None}  # the running checkpointing run's stop flag (set by Ctrl-C)


def run() -> None:
    """The console entry point: ``main``, then exit.

    Ctrl-C ends the process at once from a signal handler, with one line and status 130.
    Not by letting KeyboardInterrupt propagate: Python raises it in whatever code runs next,
    and where that was a garbage-collection callback (JAX registers one) the exception was
    printed as "ignored" and lost -- the run went on (found by tests/test_interrupts.py);
    and after it did propagate, tearing the interpreter down under XLA's threads crashed
    the process (signal 11). Writes are atomic (files.atomic_write), so ending at once
    loses nothing that was saved."""
    import os
    import signal

    command = next((a for a in sys.argv[1:] if not a.startswith("-")), "")

    def interrupted(signum, frame):
        event = _INTERRUPT["event"]
        if event is not None and not event.is_set():  # a checkpointing run: stop after this update
            event.set()
            os.write(2, b"feascomp: interrupted; writing a checkpoint after this update (Ctrl-C again to quit now)\n")
            return
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
