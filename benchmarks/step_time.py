"""Seconds per step of projection algorithms against an Adam step on the same model, side
by side in one run; each configuration in its own subprocess so that peak memory is its own.

    python benchmarks/step_time.py                # table
    python benchmarks/step_time.py --json         # one JSON object per configuration
    python benchmarks/step_time.py --models char-rnn --algorithms adam,dr,dr:xla,ap --batch 16 --steps 5
    python benchmarks/step_time.py --models mlp1x128,cnn1x32 --algorithms adam,dr,dr@float16,dr@bfloat16

A projection step is one iteration of the algorithm (as in the paper; an update runs K of
them in one jitted scan). An Adam step is one jitted optax update called from Python,
on the model's own forward pass (the tensor IR evaluated by jax.numpy). Memory: peak RSS
growth over the RSS right after loading the data. The floor: a DR step reads the big edge
families at least twice and writes them once; 3 x state bytes / measured copy bandwidth.
XLA's memory analysis of the compiled update (temporary buffers) is reported too: RSS
growth includes the JAX runtime itself (Adam's run shows how much). The machine is shared
and noisy: compare medians and ratios.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

MODELS = {"mlp1x128": "examples/mnist_mlp.fc", "mlp4x128+readout": "examples/mnist_mlp4_readout.fc",
          "cnn1x32": "examples/mnist_cnn.fc", "char-rnn": "examples/shakespeare_rnn.fc"}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the data each model trains on (the character RNN: tiny Shakespeare, $FEASCOMP_TEXT or the shared copy)
TEXT = os.environ.get("FEASCOMP_TEXT", os.path.join(ROOT, "..", "shared", "data", "tinyshakespeare.txt"))


def load_data(model: str):
    from feascomp import data

    if model == "char-rnn":
        return data.load("text", TEXT, seq_len=32)
    return data.load("mnist5k")


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def copy_bandwidth() -> float:
    """Bytes moved per second (read + write) by a jitted in-place update of a 256 MB float32
    array (donated, as a step updates its state; a fresh output would also count the page
    faults of new memory, which the step does not pay)."""
    import jax
    import jax.numpy as jnp

    a = jnp.ones((64 * 1024 * 1024,), jnp.float32)
    nbytes = a.nbytes
    f = jax.jit(lambda a: a * 1.0000001, donate_argnums=0)
    a = jax.block_until_ready(f(a))
    ts = []
    for _ in range(7):
        t0 = time.perf_counter()
        a = jax.block_until_ready(f(a))
        ts.append(time.perf_counter() - t0)
    return 2 * nbytes / statistics.median(ts)


def worker(model: str, algorithm: str, batch: int, steps: int, updates: int) -> dict:
    import jax
    import numpy as np

    import feascomp

    ds = load_data(model)
    base = rss_mb()
    rng = np.random.default_rng(0)
    batches = [rng.choice(len(ds.x_train), batch, replace=False) for _ in range(updates + 1)]
    algorithm, _, edge = algorithm.partition("@")
    algorithm, _, lowering = algorithm.partition(":")
    rec = {"model": model, "algorithm": algorithm, "batch": batch, "edge_dtype": edge or "float32"}
    if algorithm == "adam":
        import jax.numpy as jnp
        import optax

        from feascomp.ir.tensor import evaluate
        from feascomp.solver import load_model

        tensor = load_model(os.path.join(ROOT, MODELS[model]))
        solver = feascomp.compile(tensor, batch_size=batch, steps=1)
        params = {k: jnp.asarray(v) for k, v in solver.init_params(0).items()}
        opt = optax.adam(1e-3)
        opt_state = opt.init(params)

        def loss(p, x, y):
            logits = evaluate(jnp, tensor, p, {solver.input_name: x})
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        @jax.jit
        def step(p, s, x, y):
            g = jax.grad(loss)(p, x, y)
            u, s = opt.update(g, s, p)
            return optax.apply_updates(p, u), s

        xs = [jnp.asarray(ds.x_train[i]) for i in batches]
        ys = [jnp.asarray(ds.y_train[i]) for i in batches]
        t0 = time.perf_counter()
        params, opt_state = jax.block_until_ready(step(params, opt_state, xs[0], ys[0]))
        compile_s = time.perf_counter() - t0
        n = updates * steps
        times = []
        for k in range(n):
            j = 1 + k % updates
            t0 = time.perf_counter()
            params, opt_state = jax.block_until_ready(step(params, opt_state, xs[j], ys[j]))
            times.append(time.perf_counter() - t0)
        rec.update(lowering="autodiff", seconds_per_step=statistics.median(times), compile_seconds=compile_s,
                   state_bytes=sum(v.nbytes for v in jax.tree_util.tree_leaves(opt_state)))
    else:
        solver = feascomp.compile(os.path.join(ROOT, MODELS[model]), batch_size=batch, steps=steps, algorithm=algorithm,
                                  lowering="materialized" if lowering in ("", "xla", "unfolded", "unfactored") else lowering,
                                  fuse_kernels=lowering != "xla", fold_inputs=lowering != "unfolded",
                                  factor_copies=lowering != "unfactored",
                                  edge_dtype=edge or None)
        state = solver.init(solver.init_params(0))
        compile_s = solver.compile_update(state.params)
        params, state, _ = solver.update(state, ds.x_train[batches[0]], ds.y_train[batches[0]])
        jax.block_until_ready(params)
        times = []
        for i in batches[1:]:
            t0 = time.perf_counter()
            params, state, _ = solver.update(state, ds.x_train[i], ds.y_train[i])
            jax.block_until_ready(params)
            times.append((time.perf_counter() - t0) / steps)
        fused = solver.program.native_step(solver.algorithm) is not None
        rec.update(lowering=solver.lowering + ("+kernel" if fused else "") + (f" {lowering}" if lowering in ("unfolded", "unfactored") else "")
                   + (f"/{edge}" if edge else ""),
                   seconds_per_step=statistics.median(times), compile_seconds=compile_s,
                   state_bytes=solver.state_bytes)
        mem = solver.backend._compiled.memory_analysis()
        if mem is not None:  # XLA's own accounting of the compiled update
            rec.update(xla_temp_bytes=int(mem.temp_size_in_bytes), xla_temp_over_state=mem.temp_size_in_bytes / solver.state_bytes)
    rec.update(peak_rss_mb=peak_mb(), rss_growth_mb=peak_mb() - base)
    return rec


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--models", default="mlp1x128,mlp4x128+readout", help=f"of {','.join(MODELS)}")
    ap.add_argument("--algorithms", default="adam,dr,ap,ap:collapsed",
                    help="comma-separated; ALGORITHM[:LOWERING][@EDGE_DTYPE], lowering materialized (default: with the "
                         "native fused DR step where it applies, the input folded under DR and DM), xla (materialized, "
                         "XLA's code only), unfolded (materialized, --no-fold-inputs), unfactored (materialized, "
                         "--no-factor-copies: the folded layer's copies stored as arrays) or collapsed; "
                         "edge dtype float16 or bfloat16 (--edge-dtype)")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=10, help="projection steps per update (K)")
    ap.add_argument("--updates", type=int, default=5, help="timed updates per configuration")
    ap.add_argument("--worker", nargs=2, metavar=("MODEL", "ALGORITHM"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], args.worker[1], args.batch, args.steps, args.updates)))
        return
    bw = copy_bandwidth()
    results = []
    for model in args.models.split(","):
        for alg in args.algorithms.split(","):
            cmd = [sys.executable, __file__, "--worker", model, alg, "--batch", str(args.batch),
                   "--steps", str(args.steps), "--updates", str(args.updates)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            rec = json.loads(out)
            if rec["lowering"].startswith("materialized"):  # a traffic-bound lowering
                rec["traffic_floor_seconds"] = 3 * rec["state_bytes"] / bw
                rec["time_over_floor"] = rec["seconds_per_step"] / rec["traffic_floor_seconds"]
                rec["memory_growth_over_state"] = rec["rss_growth_mb"] * 2**20 / rec["state_bytes"]
            results.append(rec)
            if args.json:
                print(json.dumps(rec), flush=True)
    adam = {r["model"]: r["seconds_per_step"] for r in results if r["algorithm"] == "adam"}
    if not args.json:
        print(f"copy bandwidth {bw / 1e9:.1f} GB/s; batch {args.batch}; K = {args.steps}; median over {args.updates} updates")
        print(f"{'model':18s} {'alg':5s} {'lowering':28s} {'ms/step':>9s} {'x Adam':>7s} {'state MB':>9s} {'RSS+ MB':>8s} {'XLA tmp MB':>10s} {'/floor':>7s}")
        for r in results:
            ratio = r["seconds_per_step"] / adam[r["model"]] if r["model"] in adam else float("nan")
            floor = f"{r['time_over_floor']:.1f}" if "time_over_floor" in r else ""
            tmp = f"{r['xla_temp_bytes'] / 2**20:.0f}" if "xla_temp_bytes" in r else ""
            print(f"{r['model']:18s} {r['algorithm']:5s} {r['lowering']:28s} {r['seconds_per_step'] * 1e3:9.2f} {ratio:7.1f} "
                  f"{r['state_bytes'] / 2**20:9.1f} {r['rss_growth_mb']:8.0f} {tmp:>10s} {floor:>7s}")


if __name__ == "__main__":
    main()
