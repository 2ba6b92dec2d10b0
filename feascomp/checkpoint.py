"""Checkpoints of a training run: one ``checkpoint.npz`` in the run's folder, replaced
atomically (files.atomic_write), holding everything a resumed run needs to end bit for bit
where an uninterrupted one ends:

- ``param:*``: the current parameters; ``best:*``: the best-on-validation ones;
- ``carry:i``: the leaves of what carries between updates (the optimizer's state for
  SGD/Adam, the edges under ``--warm-start``), restored into the structure the solver
  makes for the same parameters (:meth:`Solver.carry_structure`);
- ``meta``: a JSON document: the format version, the run's *fingerprint* (the model's IR,
  the compile options, the dataset and its sizes, the seed and the protocol's options: a
  checkpoint of another run is refused with what differs), the number of updates done, the
  training seconds so far, the evaluation history and the protocol's counters.

Nothing else is random: the initial parameters come from the seed, and each epoch's data
order from (seed, epoch) alone (data.epoch_order), so the position in the data is the
number of updates done.

Why not Orbax: its value is asynchronous, sharded, multi-host saving of large pytrees
(through TensorStore); a run here is a few arrays in one process, and the format must be
readable with NumPy alone for checking and refusing. When the scale-out issue shards the
state across hosts, process 0 writes this file (or Orbax takes over for sharded arrays).
"""
from __future__ import annotations

import hashlib
import json
import os
import zipfile

import numpy as np

from .errors import FeascompError, Loc

FORMAT = "feascomp-checkpoint/1"
FILE = "checkpoint.npz"


def fingerprint(solver, ds, *, seed: int, protocol: dict) -> dict:
    """What must be equal for a checkpoint to continue this run."""
    from .ir import print_tensor

    model = hashlib.sha256(print_tensor(solver.tensor).encode()).hexdigest()[:16]
    return {
        "model": model,
        # the devices are not part of it: a run gives the same iterates on any mesh, so it
        # may resume on another (docs/distributed.md)
        "options": {k: (v if isinstance(v, (int, float, str, bool, type(None))) else repr(v))
                    for k, v in sorted(solver.options.as_dict().items())
                    # no outer step is left out, so checkpoints from before the option resume
                    if k not in ("mesh", "devices") and not (k == "outer_step" and not v)},
        "dataset": {"name": ds.name, "source": ds.source, "train": int(len(ds.x_train)),
                    "validation": int(0 if ds.x_val is None else len(ds.x_val)), "test": int(len(ds.x_test))},
        "seed": int(seed),
        "protocol": protocol,
    }


def _differences(saved, now, prefix="") -> list[str]:
    if isinstance(saved, dict) and isinstance(now, dict):
        out = []
        for k in sorted(set(saved) | set(now)):
            out += _differences(saved.get(k, "(absent)"), now.get(k, "(absent)"), f"{prefix}{k}.")
        return out
    return [] if saved == now else [f"{prefix.rstrip('.')}: checkpoint {saved!r}, this run {now!r}"]


def save(folder: str, *, params: dict, best: dict | None, carry, meta: dict) -> str:
    """Write the checkpoint atomically; returns its path."""
    import jax

    from .files import atomic_write

    arrays = {f"param:{k}": np.asarray(v) for k, v in params.items()}
    arrays.update({f"best:{k}": np.asarray(v) for k, v in (best or {}).items()})
    for i, leaf in enumerate(jax.tree_util.tree_leaves(carry) if carry is not None else ()):
        arrays[f"carry:{i}"] = np.asarray(leaf)
    arrays["meta"] = np.asarray(json.dumps({"format": FORMAT, **meta}))
    path = os.path.join(folder, FILE)
    atomic_write(path, lambda fh: np.savez(fh, **arrays))
    return path


def load(folder: str, expected: dict, carry_structure=None) -> dict | None:
    """The checkpoint in ``folder``, checked against this run's fingerprint, or None when
    there is none. ``carry_structure()`` gives the pytree (of ShapeDtypeStructs) the saved
    carry leaves are put back into."""
    import jax

    path = os.path.join(folder, FILE)
    if not os.path.exists(path):
        return None
    where = Loc(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        meta = json.loads(str(arrays.pop("meta")))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise FeascompError(f"not a readable feascomp checkpoint ({type(e).__name__}: {e}); "
                            "remove it to start again", where) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise FeascompError(f"not a feascomp checkpoint (format {meta.get('format') if isinstance(meta, dict) else None!r}, "
                            f"expected {FORMAT!r})", where)
    diff = _differences(meta.get("fingerprint"), expected)
    if diff:
        raise FeascompError("the checkpoint belongs to another run; it differs in " + "; ".join(diff[:6])
                            + ("; ..." if len(diff) > 6 else ""), where,
                            note="use another --checkpoint folder, or remove this one to start again")
    out = {"meta": meta,
           "params": {k[6:]: v for k, v in arrays.items() if k.startswith("param:")},
           "best": {k[5:]: v for k, v in arrays.items() if k.startswith("best:")} or None,
           "carry": None}
    leaves = [arrays[f"carry:{i}"] for i in range(sum(k.startswith("carry:") for k in arrays))]
    if leaves:
        structure = carry_structure() if carry_structure is not None else None
        want = jax.tree_util.tree_leaves(structure) if structure is not None else []
        if len(want) == len(leaves):  # bfloat16 edges (--edge-dtype) come back from .npz as raw 2-byte values
            leaves = [a.view(w.dtype) if a.dtype.kind == "V" and a.dtype.itemsize == np.dtype(w.dtype).itemsize else a
                      for a, w in zip(leaves, want)]
        if len(want) != len(leaves) or any(tuple(a.shape) != tuple(w.shape) or a.dtype != w.dtype
                                           for a, w in zip(leaves, want)):
            raise FeascompError("the checkpoint's carried state does not fit this solver", where)
        out["carry"] = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(structure), leaves)
    for k, v in out["params"].items():
        if not np.all(np.isfinite(v)):
            raise FeascompError(f"parameter {k} holds non-finite values", where)
    return out
