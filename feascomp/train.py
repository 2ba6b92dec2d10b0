"""The training driver (Algorithm 1): batches in, one solver update per batch."""
from __future__ import annotations

import os
import resource
import sys
import time

import numpy as np

from . import numerics
from .data import Dataset, batches
from .errors import FeascompError
from .backends.factored import FactoredCopies
from .backends.fused import FusedSums
from .files import atomic_write


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class Interrupted(Exception):
    """The run was asked to stop (Ctrl-C) and its checkpoint written."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


def train(solver, ds: Dataset, *, updates: int, seed: int = 0, eval_every: int = 10, progress: bool = True,
          history: list | None = None, patience: int | None = None, target_accuracy: float | None = None,
          checkpoint: str | None = None, checkpoint_every: int | None = None, stop=None,
          max_seconds: float | None = None,
          on_divergence: str = "the run stopped there; its parameters were not returned") -> tuple[dict, dict]:
    """Train from the model's initialisers by the paper's protocol; returns (params, report).

    Every ``eval_every`` updates (and after the last) the model is evaluated on the
    validation set (the test set when the dataset has none); the best evaluation's
    parameters are returned and reported on test. ``patience``: stop after this many
    evaluations without improvement (early stopping); ``target_accuracy``: stop at the first
    evaluation that reaches it and report ``seconds_to_target`` (training time only) and
    ``steps_to_target``; ``max_seconds``: a time budget, stop once the training time (as
    reported) reaches it. Time per step counts the updates only (not data loading,
    evaluation or compilation).

    ``checkpoint``: a folder holding the latest checkpoint (feascomp/checkpoint.py), written
    every ``checkpoint_every`` updates (default: at each evaluation), at the end, and when
    ``stop`` (a threading.Event) is set -- the run then raises :class:`Interrupted`. A
    checkpoint already there is resumed (and refused if it belongs to another run).

    If ``history`` is a list, one dict per projection step is appended (update, step,
    residual, family distances when the solver monitors, accuracy at evaluation points).
    An update whose state becomes NaN or Inf raises :class:`numerics.Diverged` naming the
    family and step where it started (``on_divergence``: the note it carries)."""
    import jax

    from . import checkpoint as ckpt

    if updates < 1:
        raise FeascompError("--updates must be at least 1")
    split, x_eval, y_eval = ds.evaluation
    protocol = {"eval_every": eval_every, "patience": patience, "target_accuracy": target_accuracy,
                "evaluated_on": split}
    init_seq, order_seq = np.random.SeedSequence(seed).spawn(2)
    order_seed = int(order_seq.generate_state(1)[0])
    params = solver.init_params(int(init_seq.generate_state(1)[0]))
    state = solver.init(params)
    run = _Run(split)
    fingerprint = None
    if checkpoint:
        fingerprint = ckpt.fingerprint(solver, ds, seed=seed, protocol=protocol)
        os.makedirs(checkpoint, exist_ok=True)
        saved = ckpt.load(checkpoint, fingerprint, lambda: solver.carry_structure(state.params))
        if saved is not None:
            run.restore(saved["meta"], saved["best"])
            params = saved["params"]
            state = type(state)(params, run.done, saved["carry"])
    compile_seconds = solver.compile_update(state.params)
    order = batches(len(ds.x_train), solver.batch_size, order_seed, start=run.done)
    every = checkpoint_every or eval_every or updates

    def write_checkpoint():
        if not solver.writes:  # a multi-process run: process 0 writes, every process reads
            return
        ckpt.save(checkpoint, params=state.params, best=run.best, carry=state.edges if solver.carry else None,
                  meta={"fingerprint": fingerprint, **run.as_meta()})

    bar = _progress(updates, progress, run.done)
    while run.done < updates and not run.stopped:
        u = run.done + 1
        idx = next(order)
        xb, yb = ds.x_train[idx], ds.y_train[idx]
        t0 = time.perf_counter()
        before = state
        params, state, info = solver.update(state, xb, yb)
        jax.block_until_ready(params)
        run.seconds += time.perf_counter() - t0
        run.done = u
        if not numerics.finite(info, params):
            where = numerics.locate(solver, before.params, xb, yb, before.edges)
            raise numerics.Diverged(u, where, solver.steps, on_divergence)
        run.residual = float(info["residual"][-1])
        out_of_time = max_seconds is not None and run.seconds >= max_seconds
        evaluated = bool(eval_every and u % eval_every == 0) or u == updates or out_of_time
        if evaluated:
            run.evaluate(u, u * solver.steps, solver.accuracy(state.params, x_eval, y_eval), state.params,
                         patience=patience, target=target_accuracy)
        if out_of_time and not run.stopped:
            run.stopped, run.stop_reason = True, "time"
        if history is not None:
            _log(history, info, u, solver.steps, run.evaluations[-1]["accuracy"] if evaluated else "", split)
        bar.update(u, run.residual, run.last_accuracy)
        interrupted = stop is not None and stop.is_set()
        if checkpoint and (interrupted or u % every == 0 or u == updates or run.stopped):
            write_checkpoint()
        if interrupted:
            bar.close()
            raise Interrupted(f"interrupted after update {u} of {updates}; the checkpoint in {checkpoint} "
                              "holds it: run the same command to resume")
    bar.close()
    final = {k: np.asarray(v) for k, v in state.params.items()}
    chosen = run.best if (run.best is not None and split == "validation") else final
    report = {
        "algorithm": solver.algorithm.name,
        "backend": solver.backend.name,
        "lowering": solver.lowering,
        # the families whose DR step the native kernels run, when the native step is used
        "fused_families": sorted(solver.program.strategies(FusedSums)) if solver.program.native_step(solver.algorithm)
        else [],
        # the families that project with the input held fixed (fold_inputs: DR and DM)
        "folded_families": sorted(n for n, s in solver.program.storage.items() if getattr(s, "fixed", None)),
        # of those, the families whose copies of their other operand are stored factored (factor_copies)
        "factored_families": sorted(solver.program.strategies(FactoredCopies)),
        # the parameters an update moves by a factor of their consensus move (outer_step)
        "outer_step": dict(solver.outer_step),
        "devices": solver.devices,
        "mesh": dict(solver.mesh),
        "processes": solver.processes,
        "device_state_bytes": solver.device_state_bytes,
        "dataset": ds.name,
        "seed": seed,
        "updates": run.done,
        "steps": run.done * solver.steps,
        "steps_per_batch": solver.steps,
        "batch_size": solver.batch_size,
        "dtype": solver.dtype,
        "edge_dtype": solver.edge_dtype,
        "evaluated_on": split,
        "train_accuracy": solver.accuracy(chosen, ds.x_train, ds.y_train),
        "test_accuracy": solver.accuracy(chosen, ds.x_test, ds.y_test),
        "final_test_accuracy": solver.accuracy(final, ds.x_test, ds.y_test),
        # the test accuracy of always answering the training set's most frequent class (the
        # majority character of a text): the floor a model must clear
        "majority_accuracy": majority_accuracy(ds),
        **run.summary(),
        "final_residual": run.residual,
        "training_seconds": run.seconds,
        "seconds_per_step": run.seconds / max(run.done * solver.steps, 1),
        "compile_seconds": compile_seconds,
        "pass_seconds": sum(solver.pass_seconds.values()),
        "state_bytes": solver.state_bytes,
        "memory": solver.memory.as_dict(),  # the estimate the run was checked against (feascomp/resources.py)
        "peak_rss_mb": peak_rss_mb(),
    }
    if checkpoint:
        report["checkpoint"] = os.path.join(checkpoint, ckpt.FILE)
    return (chosen if solver.treedef is None else solver._tree(chosen)), report


def majority_accuracy(ds) -> float:
    """Test accuracy of predicting the training labels' most frequent class everywhere."""
    y = np.asarray(ds.y_train).astype(np.int64).ravel()
    return float(np.mean(np.asarray(ds.y_test) == np.bincount(y).argmax()))


class _Run:
    """The protocol's bookkeeping: updates done, training seconds, evaluations, the best
    parameters, early stopping and the target (all of it saved in checkpoints)."""

    def __init__(self, split):
        self.split = split
        self.done, self.seconds, self.residual = 0, 0.0, float("nan")
        self.evaluations: list[dict] = []
        self.best, self.best_accuracy, self.best_update = None, -1.0, 0
        self.stale, self.stopped, self.stop_reason = 0, False, None
        self.target = None  # {"update", "step", "seconds", "accuracy"} of the first evaluation reaching it

    @property
    def last_accuracy(self):
        return self.evaluations[-1]["accuracy"] if self.evaluations else float("nan")

    def evaluate(self, u, step, acc, params, *, patience, target):
        self.evaluations.append({"update": u, "step": step, "seconds": self.seconds, "accuracy": acc})
        if acc > self.best_accuracy:
            self.best = {k: np.asarray(v) for k, v in params.items()}
            self.best_accuracy, self.best_update, self.stale = acc, u, 0
        else:
            self.stale += 1
        if target is not None and self.target is None and acc >= target:
            self.target = dict(self.evaluations[-1])
            self.stopped, self.stop_reason = True, "target"
        elif patience is not None and self.stale >= patience:
            self.stopped, self.stop_reason = True, "patience"

    def summary(self) -> dict:
        """The paper's columns: the best evaluation, and the first to reach 99 % of it
        (steps and training seconds "to best")."""
        out = {f"best_{self.split}_accuracy": self.best_accuracy if self.evaluations else None,
               "best_update": self.best_update, "stopped": self.stop_reason, "evaluations": self.evaluations}
        if self.evaluations:
            first = next(e for e in self.evaluations if e["accuracy"] >= 0.99 * self.best_accuracy)
            out.update(steps_to_best=first["step"], seconds_to_best=first["seconds"])
        if self.target is not None:
            out.update(steps_to_target=self.target["step"], seconds_to_target=self.target["seconds"],
                       updates_to_target=self.target["update"])
        return out

    def as_meta(self) -> dict:
        return {"done": self.done, "seconds": self.seconds, "residual": self.residual, "evaluations": self.evaluations,
                "best_accuracy": self.best_accuracy, "best_update": self.best_update, "stale": self.stale,
                "stopped": self.stopped, "stop_reason": self.stop_reason, "target": self.target}

    def restore(self, meta, best):
        for k in ("done", "seconds", "residual", "evaluations", "best_accuracy", "best_update", "stale", "stopped",
                  "stop_reason", "target"):
            setattr(self, k, meta[k])
        self.best = best


def _log(history, info, u, steps_per_batch, acc, split):
    steps = np.asarray(info["residual"])
    fam = np.asarray(info["family_residual"]) if "family_residual" in info else None
    for k in range(len(steps)):
        row = {"update": u, "step": (u - 1) * steps_per_batch + k + 1, "residual": float(steps[k])}
        if fam is not None:
            row.update({f"dist:{n}": float(v) for n, v in zip(info["families"], fam[k])})
        row[f"{split}_accuracy"] = acc if k == len(steps) - 1 else ""
        history.append(row)


class _progress:
    """tqdm if installed and wanted, else silence."""

    def __init__(self, total, enabled, initial=0):
        self.bar = None
        if enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, initial=initial, file=sys.stderr, unit="batch", mininterval=0.5, dynamic_ncols=True)
            except ImportError:
                pass

    def update(self, u, residual, acc):
        if self.bar is not None:
            self.bar.set_postfix(residual=f"{residual:.3g}", acc=f"{acc:.3f}", refresh=False)
            self.bar.update(1)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def save_params(path: str, params: dict, meta: dict | None = None) -> None:
    """Write parameters as .npz, atomically."""
    arrays = {f"param:{k}": np.asarray(v) for k, v in params.items()}
    for k, v in (meta or {}).items():
        arrays[f"meta:{k}"] = np.asarray(v)
    atomic_write(path, lambda fh: np.savez(fh, **arrays))


def save_history(path: str, rows: list[dict]) -> None:
    """The per-step residual log as CSV, atomically."""
    import csv
    import io

    columns = list(rows[0]) if rows else ["update", "step", "residual", "test_accuracy"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns)
    w.writeheader()
    w.writerows(rows)
    atomic_write(path, lambda fh: fh.write(buf.getvalue().encode()))


def load_params(path: str) -> dict:
    from .errors import Loc

    try:
        with open(path, "rb") as fh:
            magic = fh.read(6)
        if magic == b"\x93NUMPY":
            raise FeascompError("a single array (.npy), not a parameter file (.npz, as --save writes)", Loc(path))
        if not magic.startswith(b"PK"):
            raise FeascompError("not a parameter file (an .npz archive, as --save writes)", Loc(path))
        with np.load(path, allow_pickle=False) as z:
            params = {k[len("param:"):]: z[k] for k in z.files if k.startswith("param:")}
    except FileNotFoundError:
        raise FeascompError("no such file", Loc(path)) from None
    except IsADirectoryError:
        raise FeascompError("is a directory, not a parameter file", Loc(path)) from None
    except FeascompError:
        raise
    except MemoryError:
        raise FeascompError("the parameter file's arrays do not fit in memory", Loc(path)) from None
    except Exception as e:  # noqa: BLE001 - whatever a damaged file makes the readers raise (BadZipFile, EOFError, ...)
        raise FeascompError(f"not a feascomp parameter file ({type(e).__name__}: {e})", Loc(path)) from None
    if not params:
        raise FeascompError("the file holds no parameters", Loc(path))
    for k, v in params.items():
        if v.dtype.kind not in "fiu":
            raise FeascompError(f"parameter {k} holds {v.dtype} values, not numbers", Loc(path))
        if not np.all(np.isfinite(v)):
            raise FeascompError(f"parameter {k} holds non-finite values (NaN or Inf)", Loc(path))
    return params
