"""The training driver (Algorithm 1): batches in, one solver update per batch."""
from __future__ import annotations

import os
import resource
import sys
import tempfile
import time

import numpy as np

from .data import Dataset, batches
from .errors import FeascompError


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def train(solver, ds: Dataset, *, updates: int, seed: int = 0, eval_every: int = 10, progress: bool = True) -> tuple[dict, dict]:
    """Train from the model's initialisers; returns (params, report)."""
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
        params, state, info = solver.update(state, ds.x_train[idx], ds.y_train[idx])
        jax.block_until_ready(params)
        timed += time.perf_counter() - t0
        residual = float(info["residual"][-1])
        if not np.isfinite(residual):
            raise FeascompError(f"the iteration diverged at update {u} (residual {residual})")
        if eval_every and (u % eval_every == 0 or u == updates):
            test_acc = solver.accuracy(params, ds.x_test, ds.y_test)
        bar.update(u, residual, test_acc)
    bar.close()
    report = {
        "algorithm": solver.algorithm.name,
        "backend": solver.backend.name,
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


def save_params(path: str, params: dict, meta: dict | None = None) -> None:
    """Write parameters as .npz atomically: a temporary file in the same folder, fsynced,
    then renamed over the target, so a failure never leaves a partial file."""
    folder = os.path.dirname(os.path.abspath(path)) or "."
    if not os.path.isdir(folder):
        raise FeascompError(f"cannot save to {path}: folder {folder} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=".feascomp-", suffix=".npz", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            arrays = {f"param:{k}": np.asarray(v) for k, v in params.items()}
            for k, v in (meta or {}).items():
                arrays[f"meta:{k}"] = np.asarray(v)
            np.savez(fh, **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_params(path: str) -> dict:
    from .errors import Loc

    try:
        with np.load(path, allow_pickle=False) as z:
            params = {k[len("param:"):]: z[k] for k in z.files if k.startswith("param:")}
    except FileNotFoundError:
        raise FeascompError("no such file", Loc(path)) from None
    except IsADirectoryError:
        raise FeascompError("is a directory, not a parameter file", Loc(path)) from None
    except (OSError, ValueError) as e:
        raise FeascompError(f"not a feascomp parameter file ({e})", Loc(path)) from None
    if not params:
        raise FeascompError("the file holds no parameters", Loc(path))
    return params
