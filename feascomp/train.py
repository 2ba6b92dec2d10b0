"""The training driver (Algorithm 1): batches in, one solver update per batch."""
from __future__ import annotations

import os
import resource
import sys
import tempfile
import time

import numpy as np

from . import numerics
from .data import Dataset, batches
from .errors import FeascompError


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def train(solver, ds: Dataset, *, updates: int, seed: int = 0, eval_every: int = 10, progress: bool = True,
          history: list | None = None,
          on_divergence: str = "the run stopped there; its parameters were not returned") -> tuple[dict, dict]:
    """Train from the model's initialisers; returns (params, report). If ``history`` is a
    list, one dict per projection step is appended (update, step, residual, family
    distances when the solver monitors, test accuracy at evaluation points).

    An update whose state becomes NaN or Inf raises :class:`numerics.Diverged` naming the
    family and step where it started (``on_divergence``: the note it carries)."""
    import jax

    if updates < 1:
        raise FeascompError("--updates must be at least 1")
    init_seq, order_seq = np.random.SeedSequence(seed).spawn(2)
    params = solver.init_params(int(init_seq.generate_state(1)[0]))
    state = solver.init(params)
    compile_seconds = solver.compile_update(state.params)
    order = batches(len(ds.x_train), solver.batch_size, np.random.default_rng(order_seq))
    bar = _progress(updates, progress)
    timed, residual, test_acc = 0.0, float("nan"), float("nan")
    for u in range(1, updates + 1):
        idx = next(order)
        t0 = time.perf_counter()
        before = state
        params, state, info = solver.update(state, ds.x_train[idx], ds.y_train[idx])
        jax.block_until_ready(params)
        timed += time.perf_counter() - t0
        if not numerics.finite(info, params):
            where = numerics.locate(solver, before.params, ds.x_train[idx], ds.y_train[idx], before.edges)
            raise numerics.Diverged(u, where, solver.steps, on_divergence)
        residual = float(info["residual"][-1])
        evaluated = bool(eval_every) and (u % eval_every == 0 or u == updates)
        if evaluated:
            test_acc = solver.accuracy(params, ds.x_test, ds.y_test)
        if history is not None:
            steps = np.asarray(info["residual"])
            fam = np.asarray(info["family_residual"]) if "family_residual" in info else None
            for k in range(len(steps)):
                row = {"update": u, "step": (u - 1) * solver.steps + k + 1, "residual": float(steps[k])}
                if fam is not None:
                    row.update({f"dist:{n}": float(v) for n, v in zip(info["families"], fam[k])})
                row["test_accuracy"] = test_acc if (evaluated and k == len(steps) - 1) else ""
                history.append(row)
        bar.update(u, residual, test_acc)
    bar.close()
    report = {
        "algorithm": solver.algorithm.name,
        "backend": solver.backend.name,
        "lowering": solver.lowering,
        "fused_families": sorted(getattr(solver.program, "fused", {})),  # DR steps run by the native kernels
        "dataset": ds.name,
        "seed": seed,
        "updates": updates,
        "steps": updates * solver.steps,
        "steps_per_batch": solver.steps,
        "batch_size": solver.batch_size,
        "dtype": solver.dtype,
        "train_accuracy": solver.accuracy(params, ds.x_train, ds.y_train),
        "test_accuracy": solver.accuracy(params, ds.x_test, ds.y_test),
        "final_residual": residual,
        "seconds_per_step": timed / (updates * solver.steps),
        "compile_seconds": compile_seconds,
        "pass_seconds": sum(solver.pass_seconds.values()),
        "state_bytes": solver.state_bytes,
        "memory": solver.memory.as_dict(),  # the estimate the run was checked against (feascomp/resources.py)
        "peak_rss_mb": peak_rss_mb(),
    }
    return {k: np.asarray(v) for k, v in params.items()}, report


class _progress:
    """tqdm if installed and wanted, else silence."""

    def __init__(self, total, enabled):
        self.bar = None
        if enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, file=sys.stderr, unit="batch", mininterval=0.5, dynamic_ncols=True)
            except ImportError:
                pass

    def update(self, u, residual, acc):
        if self.bar is not None:
            self.bar.set_postfix(residual=f"{residual:.3g}", test_acc=f"{acc:.3f}", refresh=False)
            self.bar.update(1)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def atomic_write(path: str, write) -> None:
    """Call write(binary file) on a temporary file in path's folder, fsync it, then rename it
    over path: a failure never leaves a partial file."""
    folder = os.path.dirname(os.path.abspath(path)) or "."
    if not os.path.isdir(folder):
        raise FeascompError(f"cannot write {path}: folder {folder} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=".feascomp-", suffix=os.path.splitext(path)[1], dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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
