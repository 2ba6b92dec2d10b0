"""What the non-finite check costs: an update (K steps, jitted) against the check that
follows it in ``feascomp train`` (feascomp/numerics.py ``finite``: the K step residuals and
the parameters, read on the host), side by side in one run, median of repeats.

    python benchmarks/nan_check.py                 # table
    python benchmarks/nan_check.py --json out.json # and the figures as JSON

The check must cost under 5 % of an update. It reads no edge state: a NaN or Inf anywhere
in a projection's output reaches the step residual (a norm over the whole state).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = [("examples/mnist_mlp.fc", "dr", 10), ("examples/mnist_mlp.fc", "dr", 50), ("examples/mnist_mlp.fc", "ap", 10),
           ("examples/mnist_mlp4_readout.fc", "dr", 10)]


def measure(model, algorithm, steps, repeats):
    import jax
    import numpy as np

    import feascomp
    from feascomp import numerics

    solver = feascomp.compile(os.path.join(ROOT, model), batch_size=256, algorithm=algorithm, steps=steps,
                              lowering="collapsed" if algorithm == "ap" else "materialized")
    rng = np.random.default_rng(0)
    x = rng.random((256,) + solver.input_shape, dtype=np.float32)
    y = rng.integers(0, solver.num_classes, 256)
    state = solver.init(solver.init_params(0))
    solver.compile_update(state.params)
    updates, checks = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        params, state, info = solver.update(state, x, y)
        jax.block_until_ready((params, info))
        t1 = time.perf_counter()
        ok = numerics.finite(info, params)
        t2 = time.perf_counter()
        assert ok
        updates.append(t1 - t0)
        checks.append(t2 - t1)
    u, c = statistics.median(updates), statistics.median(checks)
    return {"model": model, "algorithm": algorithm, "lowering": solver.lowering, "steps": steps,
            "update_ms": u * 1e3, "check_ms": c * 1e3, "check_percent": 100 * c / u}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args()
    rows = [measure(m, a, k, args.repeats) for m, a, k in CONFIGS]
    print(f"{'model':34s} {'alg':4s} {'lowering':13s} {'K':>3s} {'update ms':>10s} {'check ms':>9s} {'check %':>8s}")
    for r in rows:
        print(f"{r['model']:34s} {r['algorithm']:4s} {r['lowering']:13s} {r['steps']:3d} {r['update_ms']:10.2f} "
              f"{r['check_ms']:9.3f} {r['check_percent']:8.2f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
