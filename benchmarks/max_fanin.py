"""The max projection's cost against its fan-in n (a global max-pool's is H*W), side by side
in one run (JAX, jitted, CPU, float32): the native kernel (the default, feascomp/kernels'
``max_project``), XLA's selection form (``kernel="xla"``) and the sort-based projection
they replaced.

    python benchmarks/max_fanin.py                 # n = 16 ... 4096, 2^22 inputs in all
    python benchmarks/max_fanin.py --json out.json

Each row projects the same number of inputs (nodes x n), so a cost linear in n shows as a
constant time per input; the sort's grows with log n. All are the same projection
(tests/test_primitives.py, tests/test_kernels.py): XLA's selection takes the TOP + 1
largest by TOP + 1 passes of a max (``maxmin._largest``) and sorts only where a node's
active set is larger; the kernel finds them in one pass per row. Inputs: x0
~ N(0, 1), y0 = max(x0) + N(0, 0.1^2), a max-pool's regime while it trains (y0 is the mean
of the out-edges, which copied max x0 at the forward pass), where the active sets are
small; y0 far below the max (a large active set) takes the sort, as before. The machine
is shared and noisy: read the medians and ratios.
"""
from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np
from primitives import median_seconds  # benchmarks/primitives.py, beside this script

from feascomp.primitives import maxmin


def by_sort(x0, y0):
    """The sort-based projection (every node sorted): the previous implementation."""
    k, y, t = maxmin._by_sort(jnp, x0, y0, 1.0)
    above, tied = x0 > t, x0 == t
    need = (k + 1 - jnp.sum(above, axis=-1))[..., None]
    member = above | (tied & (jnp.cumsum(tied, axis=-1) <= need))
    return jnp.where(member, y[..., None], x0), y


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--total", type=int, default=1 << 22, help="inputs per projection (nodes x fan-in)")
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args()
    kernel = jax.jit(lambda x, y: maxmin.project_max(jnp, {"kernel": "auto"}, (x,), y, 1.0))
    selection = jax.jit(lambda x, y: maxmin.project_max(jnp, {"kernel": "xla"}, (x,), y, 1.0))
    sort = jax.jit(by_sort)
    rows = []
    rng = np.random.default_rng(0)
    for n in (16, 64, 256, 1024, 4096):
        nodes = args.total // n
        x0 = jnp.asarray(rng.normal(size=(nodes, n)), jnp.float32)
        # y0 near the current max, as a max-pool's is while it trains (the mean of its out-edges,
        # which copied y = max x at the forward pass): the active sets are small
        y0 = jnp.asarray(np.max(np.asarray(x0), axis=-1) + 0.1 * rng.normal(size=nodes), jnp.float32)
        (_,), yk = kernel(x0, y0)
        (_,), ys = selection(x0, y0)
        _, yr = sort(x0, y0)
        assert np.allclose(np.asarray(ys), np.asarray(yr), atol=1e-5)
        assert np.allclose(np.asarray(yk), np.asarray(yr), atol=1e-5)
        t_k, t_sel, t_sort = (median_seconds(f, (x0, y0), 7) for f in (kernel, selection, sort))
        rows.append({"fan_in": n, "nodes": nodes, "kernel_ns_per_input": 1e9 * t_k / args.total,
                     "selection_ns_per_input": 1e9 * t_sel / args.total,
                     "sort_ns_per_input": 1e9 * t_sort / args.total, "selection_over_kernel": t_sel / t_k,
                     "sort_over_selection": t_sort / t_sel})
    print("| fan-in | nodes | kernel, ns per input | XLA selection, ns per input | sort, ns per input | "
          "selection / kernel | sort / selection |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['fan_in']} | {r['nodes']} | {r['kernel_ns_per_input']:.2f} | {r['selection_ns_per_input']:.2f} | "
              f"{r['sort_ns_per_input']:.2f} | {r['selection_over_kernel']:.1f} | {r['sort_over_selection']:.1f} |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"rows": rows, "jax": jax.__version__}, fh, indent=1)


if __name__ == "__main__":
    main()
