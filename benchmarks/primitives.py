"""Projection throughput of every registered primitive, side by side with its own forward
evaluation, in one run (JAX, jitted, CPU).

    python benchmarks/primitives.py                  # 1e6 nodes, vector ports of length 16, float32
    python benchmarks/primitives.py --json out.json  # also write the records

For each function primitive: median seconds of one projection of all nodes, projections
per second, and the ratio to the primitive's forward pass on the same arrays. For dot, also
the ratio to a plain batched dot product (the goal is <= 10x). Losses are timed on logits of
the port length. The machine is shared and noisy: read medians and ratios.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import feascomp.primitives as P


def median_seconds(fn, args, repeats):
    out = fn(*args)
    jax.block_until_ready(out)  # compile and warm up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def looped_seconds(step, ins, y0, repeats, length=10):
    """Median seconds per iteration of ``step`` run ``length`` times in one jitted fori_loop
    (each iteration's outputs are the next one's inputs)."""
    def run(a, b, y):
        def body(i, st):
            (a, b), y = step(*st)
            return a, b, y
        return jax.lax.fori_loop(0, length, body, (a, b, y))

    return median_seconds(jax.jit(run), (*ins, y0), repeats) / length


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=1_000_000)
    ap.add_argument("--length", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args()
    n, L = args.nodes, args.length
    rng = np.random.default_rng(0)
    records = []

    def record(name, kind, seconds, forward_seconds, note=""):
        r = {"primitive": name, "kind": kind, "nodes": n, "port_length": L, "dtype": "float32",
             "median_seconds": seconds, "projections_per_second": n / seconds,
             "vs_forward": seconds / forward_seconds, "note": note}
        records.append(r)
        print(f"{name:14s} {kind:8s} {seconds * 1e3:10.2f} {n / seconds / 1e6:12.2f} {seconds / forward_seconds:10.1f}  {note}", flush=True)

    print(f"{n} nodes, vector ports of length {L}, float32, median of {args.repeats}; jax {jax.__version__} on {jax.devices()[0].platform}")
    print(f"{'primitive':14s} {'kind':8s} {'ms':>10s} {'Mproj/s':>12s} {'x forward':>10s}")
    for name in P.names("function"):
        prim = P.get(name)
        ins = tuple(jnp.asarray(rng.normal(size=(n, L) if p.vector else (n,)), jnp.float32) for p in prim.ports)
        y0 = jnp.asarray(rng.normal(size=n) * 3, jnp.float32)
        project = jax.jit(lambda ins, y0, prim=prim: prim.project(ins, y0, 1.0))
        forward = jax.jit(lambda ins, prim=prim: prim.forward(*ins))
        t = median_seconds(project, (ins, y0), args.repeats)
        tf = median_seconds(forward, (ins,), args.repeats)
        note = ""
        if name == "dot":
            plain = jax.jit(lambda a, b: jnp.einsum("nk,nk->n", a, b))
            tp = median_seconds(plain, ins, args.repeats)
            # also inside a jitted loop, where output buffers are reused as in a training
            # step (an isolated call writes fresh buffers: page faults on 128 MB)
            tl = looped_seconds(lambda a, b, y: prim.project((a, b), y, 1.0), ins, y0, args.repeats)
            tlp = looped_seconds(lambda a, b, y: ((a, b), jnp.einsum("nk,nk->n", a, b) + 1e-3 * y), ins, y0, args.repeats)
            note = (f"{t / tp:.1f}x a plain batched dot product (goal <= 10x); in a loop "
                    f"{tl * 1e3:.1f} vs {tlp * 1e3:.1f} ms: {tl / tlp:.1f}x")
            records.append({"primitive": "dot/plain", "median_seconds": tp, "ratio": t / tp,
                            "looped_seconds": tl, "looped_plain_seconds": tlp, "looped_ratio": tl / tlp})
        record(name, "function", t, tf, note)
    for name in P.names("loss"):
        prim = P.get(name)
        x0 = jnp.asarray(rng.normal(size=(n, L)) * 3, jnp.float32)
        tgt = jnp.asarray(np.eye(L, dtype=np.float32)[rng.integers(0, L, n)])
        prox = jax.jit(lambda x, t, prim=prim: prim.prox(x, t))
        fwd = jax.jit(lambda x, t, prim=prim: prim.forward(x, t))
        record(name, "loss", median_seconds(prox, (x0, tgt), args.repeats), median_seconds(fwd, (x0, tgt), args.repeats),
               f"{L} logits per node")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(records, fh, indent=1)


if __name__ == "__main__":
    main()
