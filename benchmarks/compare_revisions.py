"""Step time of this checkout against another revision, side by side in one run.

    python benchmarks/compare_revisions.py --base HEAD~5
    python benchmarks/compare_revisions.py --base v0.3 --head main --algorithms dr,ap:collapsed --out ab.json

The revisions are checked out into temporary git worktrees (``--head`` omitted: this
working tree). Each round runs every
configuration once in each tree, alternating which goes first, each run its own process
(benchmarks/step_time.py's worker of that tree, importing that tree's feascomp): so both
see the same machine load over the run. Reported: the median over rounds of each run's
median seconds per step, and head / base. The machine is shared and noisy: read ratios.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(tree: str, model: str, alg: str, args) -> float:
    cmd = [sys.executable, os.path.join(tree, "benchmarks", "step_time.py"), "--worker", model, alg,
           "--batch", str(args.batch), "--steps", str(args.steps), "--updates", str(args.updates)]
    env = {**os.environ, "PYTHONPATH": tree}
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=tree, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])["seconds_per_step"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", required=True, help="the revision to compare against (git rev)")
    ap.add_argument("--head", help="the revision to compare (default: this working tree)")
    ap.add_argument("--models", default="mlp1x128,mlp4x128+readout")
    ap.add_argument("--algorithms", default="dr,dr:xla,ap,ap:collapsed,dr:collapsed,cp",
                    help="ALGORITHM[:LOWERING] as in benchmarks/step_time.py")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--updates", type=int, default=5)
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args()
    base_rev = subprocess.run(["git", "rev-parse", "--short", args.base], capture_output=True, text=True, check=True,
                              cwd=ROOT).stdout.strip()
    head_rev = subprocess.run(["git", "rev-parse", "--short", args.head or "HEAD"], capture_output=True, text=True,
                              check=True, cwd=ROOT).stdout.strip() + ("" if args.head else " (working tree)")
    with tempfile.TemporaryDirectory() as tmp:
        base = os.path.join(tmp, "base")
        subprocess.run(["git", "worktree", "add", "--detach", "-q", base, args.base], check=True, cwd=ROOT)
        head = ROOT
        if args.head:
            head = os.path.join(tmp, "head")
            subprocess.run(["git", "worktree", "add", "--detach", "-q", head, args.head], check=True, cwd=ROOT)
        try:
            times: dict = {}
            configs = [(m, a) for m in args.models.split(",") for a in args.algorithms.split(",")]
            for r in range(args.rounds):
                for i, (model, alg) in enumerate(configs):
                    order = [("base", base), ("head", head)]
                    if (r + i) % 2:
                        order.reverse()
                    for which, tree in order:
                        times.setdefault((model, alg), {}).setdefault(which, []).append(run(tree, model, alg, args))
        finally:
            for tree in {base, head} - {ROOT}:
                subprocess.run(["git", "worktree", "remove", "--force", tree], cwd=ROOT, check=False)
    rows = []
    print(f"base {base_rev} vs head {head_rev}; batch {args.batch}, K = {args.steps}, "
          f"median of {args.rounds} rounds of {args.updates} updates each")
    print(f"{'model':18s} {'algorithm':14s} {'base ms/step':>12s} {'head ms/step':>12s} {'head/base':>9s}")
    for (model, alg), t in times.items():
        b, h = statistics.median(t["base"]), statistics.median(t["head"])
        rows.append({"model": model, "algorithm": alg, "base_seconds": b, "head_seconds": h, "ratio": h / b,
                     "base_runs": t["base"], "head_runs": t["head"]})
        print(f"{model:18s} {alg:14s} {b * 1e3:12.2f} {h * 1e3:12.2f} {h / b:9.3f}")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"base": base_rev, "head": head_rev, "batch": args.batch, "steps": args.steps,
                       "rounds": args.rounds, "results": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
