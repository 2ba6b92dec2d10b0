"""Step time and per-device state on 1, 2 and 4 devices and on 2 processes, side by side in
one run: each configuration its own process(es), the same model, batch and K.

    python benchmarks/scaling.py                       # table
    python benchmarks/scaling.py --json out.json       # and JSON

Devices in one process are forced CPU devices (XLA_FLAGS=--xla_force_host_platform_device_count);
two processes are joined by jax.distributed over gloo on this machine. On a machine with
fewer cores than devices they share the cores, so read the times as the overhead of the
split and its communication, not as speed-up. Reported per configuration: the median
seconds per step over the timed updates, the edge state one device holds, and the bytes
all-reduced per step (each parameter's consensus).
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = {"mlp1x128": "examples/mnist_mlp.fc", "mlp4x128+readout": "examples/mnist_mlp4_readout.fc"}


def worker(args) -> None:
    if args.num_processes:
        from feascomp.backends import mesh

        mesh.initialize(f"127.0.0.1:{args.port}", args.num_processes, args.process_id, 120)
    import jax
    import numpy as np

    import feascomp
    from feascomp import data

    ds = data.load("mnist5k")
    algorithm, _, lowering = args.algorithm.partition(":")
    s = feascomp.compile(os.path.join(ROOT, MODELS[args.model]), batch_size=args.batch, steps=args.steps,
                         algorithm=algorithm, devices=args.devices or None,
                         lowering="materialized" if lowering in ("", "xla") else lowering,
                         fuse_kernels=lowering != "xla")
    rng = np.random.default_rng(0)
    state = s.init(s.init_params(0))
    compile_s = s.compile_update(state.params)
    times = []
    for u in range(args.updates + 1):
        idx = rng.choice(len(ds.x_train), args.batch, replace=False)
        t0 = time.perf_counter()
        params, state, _ = s.update(state, ds.x_train[idx], ds.y_train[idx])
        jax.block_until_ready(params)
        if u:
            times.append((time.perf_counter() - t0) / args.steps)
    comm = s.program.communication(s.algorithm, s.np_dtype.itemsize)
    if s.writes:
        print(json.dumps({"model": args.model, "algorithm": args.algorithm, "devices": s.devices,
                          "processes": s.processes, "seconds_per_step": statistics.median(times),
                          "compile_seconds": compile_s, "device_state_bytes": s.device_state_bytes,
                          "state_bytes": s.state_bytes, "allreduce_bytes_per_step": sum(comm.values())}), flush=True)


def run(args, model, alg, devices: int, processes: int) -> dict:
    base = [sys.executable, os.path.abspath(__file__), "--worker", "--model", model, "--algorithm", alg,
            "--batch", str(args.batch), "--steps", str(args.steps), "--updates", str(args.updates)]
    env = {**os.environ, "PYTHONPATH": ROOT,
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices // processes}"}
    if processes == 1:
        out = subprocess.run(base + ["--devices", str(devices)], capture_output=True, text=True, check=True, env=env)
        return json.loads(out.stdout.strip().splitlines()[-1])
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    procs = [subprocess.Popen(base + ["--num-processes", str(processes), "--process-id", str(i), "--port", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for i in range(processes)]
    outs = [p.communicate() for p in procs]
    if any(p.returncode for p in procs):
        raise RuntimeError("\n".join(err[-2000:] for _, err in outs))
    return json.loads(outs[0][0].strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="mlp1x128")
    ap.add_argument("--algorithms", default="dr,dr:xla,ap:collapsed")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--updates", type=int, default=5)
    ap.add_argument("--json", metavar="PATH", help="write the results here")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--algorithm", help=argparse.SUPPRESS)
    ap.add_argument("--devices", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--num-processes", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--process-id", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    results = []
    print(f"batch {args.batch}; K = {args.steps}; median over {args.updates} updates; forced CPU devices share "
          f"{os.cpu_count()} cores")
    print(f"{'model':18s} {'alg':14s} {'devices':>7s} {'procs':>5s} {'ms/step':>8s} {'x 1 dev':>7s} "
          f"{'state/dev MB':>12s} {'all-reduce KB/step':>18s}")
    for model in args.models.split(","):
        for alg in args.algorithms.split(","):
            one = None
            for devices, processes in ((1, 1), (2, 1), (4, 1), (2, 2)):
                r = run(args, model, alg, devices, processes)
                one = one or r["seconds_per_step"]
                results.append(r)
                print(f"{model:18s} {alg:14s} {devices:7d} {processes:5d} {r['seconds_per_step'] * 1e3:8.2f} "
                      f"{r['seconds_per_step'] / one:7.2f} {r['device_state_bytes'] / 2**20:12.1f} "
                      f"{r['allreduce_bytes_per_step'] / 1024:18.1f}", flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()
