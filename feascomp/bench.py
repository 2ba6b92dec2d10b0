"""``feascomp bench SPEC``: a grid of training runs (datasets x models x methods x seeds)
from a small TOML or JSON spec, each run one ``feascomp train ... --json`` command in its
own process; the results as the paper's tables (markdown, CSV, JSON) and figures (PNG).

A spec (TOML shown; JSON has the same structure)::

    title = "Table 2: MLPs"
    [defaults]                      # options of every run (train's flags, - as _)
    batch_size = 256
    [methods.dr]                    # a method: an --algorithm and its options and budget
    algorithm = "dr"
    updates = 400                   # a step budget ...
    max_seconds = 120               # ... and/or a time budget (training time)
    eval_every = 5
    [models."1x128"]
    file = "examples/mnist_mlp.fc"
    depth = 1                       # for the step-time-against-depth figure
    [data]                          # where file-based datasets are (--data)
    fashion-mnist = "/usr/share/datasets/fashion-mnist"
    [[grid]]
    datasets = ["mnist5k"]
    models = ["1x128"]
    methods = ["dr"]
    seeds = [0, 1, 2]

Every result line in ``runs.jsonl`` holds the run's command and its JSON report; a run
already there (same command) is not run again, so an interrupted bench resumes.
"""
from __future__ import annotations

import csv
import io
import json
import os
import platform
import re
import subprocess
import sys
import time

import numpy as np

from .errors import FeascompError, Loc, loc_in

# train's options a spec may set (as train's flags without the leading dashes, - as _)
OPTIONS = {
    "algorithm": str, "updates": int, "max_seconds": float, "eval_every": int, "patience": int,
    "target_accuracy": float, "batch_size": int, "steps_per_batch": int, "learning_rate": float, "momentum": float,
    "schedule": str, "relaxation": float, "beta": float, "lowering": str, "dtype": str, "edge_dtype": str,
    "weighted": bool,
    "warm_start": bool, "no_fuse_kernels": bool, "no_fold_inputs": bool, "no_factor_copies": bool,
    "validation": float, "seq_len": int, "data_limit": int,
    "outer_step": str,
}


def load_spec(path: str) -> dict:
    """The spec, checked: every method, model and grid entry with known keys and types."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        raise FeascompError("no such file", Loc(path)) from None
    except IsADirectoryError:
        raise FeascompError("is a directory, not a bench spec", Loc(path)) from None
    text = raw.decode("utf-8-sig", errors="replace")
    if path.endswith(".json"):
        try:
            spec = json.loads(text)
        except json.JSONDecodeError as e:
            raise FeascompError(f"invalid JSON: {e.msg}", loc_in(path, text, e.lineno, e.colno)) from None
    else:
        import tomllib

        try:
            spec = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            m = re.search(r"\(at line (\d+), column (\d+)\)", str(e))
            msg = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(e))
            raise FeascompError(f"invalid TOML: {msg}", loc_in(path, text, int(m[1]), int(m[2])) if m else Loc(path)) from None
    return check_spec(spec, path, text)


def _where(path, text, needle):
    """The first line of the spec mentioning ``needle`` (for located messages)."""
    for i, line in enumerate(text.splitlines(), 1):
        col = line.find(needle)
        if col >= 0:
            return loc_in(path, text, i, col + 1)
    return Loc(path)


def check_spec(spec, path: str, text: str = "") -> dict:
    def fail(msg, needle=None):
        raise FeascompError(msg, _where(path, text, needle) if needle else Loc(path))

    if not isinstance(spec, dict):
        fail("a bench spec is a table (TOML) or object (JSON)")
    known = {"title", "defaults", "methods", "models", "data", "grid", "notes", "thresholds", "baseline"}
    for k in spec:
        if k not in known:
            fail(f"unknown key {k!r}; a spec has {', '.join(sorted(known))}", k)

    def options(table, where):
        if not isinstance(table, dict):
            fail(f"{where} must be a table of options", where.split(".")[-1])
        for k, v in table.items():
            if k in ("file", "depth") and where.startswith("models."):
                continue
            if k not in OPTIONS:
                fail(f"{where}: unknown option {k!r}; options: {', '.join(OPTIONS)}", k)
            want = OPTIONS[k]
            ok = isinstance(v, bool) if want is bool else (
                isinstance(v, want) or (want is float and isinstance(v, int))) and not (want is not bool and isinstance(v, bool))
            if not ok:
                fail(f"{where}: option {k} must be {want.__name__}, got {v!r}", k)

    options(spec.get("defaults", {}), "defaults")
    methods, models = spec.get("methods", {}), spec.get("models", {})
    for name, m in methods.items():
        options(m, f"methods.{name}")
        if "algorithm" not in m:
            fail(f"method {name!r} needs an algorithm (dr, ap, cp, dm, sgd or adam)", name)
    for name, m in models.items():
        options(m, f"models.{name}")
        if not isinstance(m.get("file"), str):
            fail(f"model {name!r} needs a file (a .fc path)", name)
        if "depth" in m and not isinstance(m["depth"], int):
            fail(f"model {name!r}: depth must be a whole number", name)
    if not isinstance(spec.get("data", {}), dict):
        fail("data must map dataset names to paths", "data")
    thresholds = spec.get("thresholds", [])
    if not isinstance(thresholds, list) or not all(
            isinstance(t, (int, float)) and not isinstance(t, bool) and 0 < t <= 1 for t in thresholds):
        fail("thresholds must be a list of validation accuracies in (0, 1]", "thresholds")
    if "baseline" in spec and spec["baseline"] not in methods:
        fail(f"baseline names method {spec['baseline']!r}, which the spec does not define", "baseline")
    grid = spec.get("grid")
    if not isinstance(grid, list) or not grid:
        fail("a spec needs at least one [[grid]] entry (datasets, models, methods, seeds)")
    from .data import DATASETS

    for g in grid:
        for k in g:
            if k not in ("datasets", "models", "methods", "seeds"):
                fail(f"grid: unknown key {k!r} (datasets, models, methods, seeds)", k)
        for k, table in (("models", models), ("methods", methods)):
            for name in g.get(k, []):
                if name not in table:
                    fail(f"grid names {k[:-1]} {name!r}, which the spec does not define", name)
        for d in g.get("datasets", []):
            if d not in DATASETS:
                fail(f"unknown dataset {d!r}; available: {', '.join(DATASETS)}", d)
        if not all(isinstance(s, int) and s >= 0 for s in g.get("seeds", [0])):
            fail("seeds must be whole numbers >= 0", "seeds")
        if not (g.get("datasets") and g.get("models") and g.get("methods")):
            fail("each grid entry needs datasets, models and methods")
    spec.setdefault("title", os.path.splitext(os.path.basename(path))[0])
    spec["_path"] = path
    return spec


def expand(spec: dict) -> list[dict]:
    """The runs of the grid, in order, each with its command."""
    runs, seen = [], set()
    for g in spec["grid"]:
        for dataset in g["datasets"]:
            for model in g["models"]:
                for method in g["methods"]:
                    for seed in g.get("seeds", [0]):
                        key = (dataset, model, method, seed)
                        if key in seen:
                            continue
                        seen.add(key)
                        options = {**spec.get("defaults", {}), **spec["models"][model], **spec["methods"][method]}
                        depth = options.pop("depth", None)
                        file = options.pop("file")
                        argv = ["train", file, "--dataset", dataset, "--seed", str(seed), "--json"]
                        if dataset in spec.get("data", {}):
                            argv += ["--data", spec["data"][dataset]]
                        for k, v in options.items():
                            flag = "--" + k.replace("_", "-")
                            if isinstance(v, bool):
                                argv += [flag] if v else []
                            else:
                                argv += [flag, str(v)]
                        budget = " / ".join(b for b in (
                            f"{options['updates']} updates" if "updates" in options else "",
                            f"{options['max_seconds']:g} s" if "max_seconds" in options else "") if b)
                        runs.append({"dataset": dataset, "model": model, "method": method, "seed": seed,
                                     "depth": depth, "budget": budget or "50 updates",
                                     "command": "feascomp " + " ".join(argv), "argv": argv})
    return runs


def machine() -> dict:
    """What the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), cpu)
    except OSError:
        pass
    mem = None
    try:
        with open("/proc/meminfo") as fh:
            mem = next(int(ln.split()[1]) * 1024 for ln in fh if ln.startswith("MemTotal"))
    except (OSError, StopIteration):
        pass
    try:
        import jax

        jax_version = jax.__version__
    except ImportError:
        jax_version = None
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_bytes": mem, "python": platform.python_version(),
            "jax": jax_version, "platform": platform.platform(), "date": time.strftime("%Y-%m-%d")}


def run_bench(spec: dict, out: str, *, progress=True, dry_run=False, tables_only=False, runner=None) -> dict:
    """Run every run of the grid not already in ``out``/runs.jsonl (a run logged as failed,
    say for a dataset not installed then, runs again), then write the tables
    and figures; returns the summary. ``runner(argv) -> (exit code, stdout, stderr)``
    runs one ``feascomp`` command (default: a new process). ``tables_only``: run nothing,
    write the tables of the runs already there and list the grid's others as not yet run
    (a table that takes hours fills in over several sittings)."""
    runs = expand(spec)
    if dry_run:
        for r in runs:
            print(r["command"])
        return {}
    log_path = os.path.join(out, "runs.jsonl")
    done = _read_log(log_path)
    todo = [r for r in runs if r["command"] not in done or "error" in done[r["command"]]]
    say = (lambda msg: print(msg, file=sys.stderr, flush=True)) if progress else (lambda msg: None)
    if tables_only:  # a run logged as failed is a failed row of the table
        logged = [done[r["command"]] for r in runs if r["command"] in done]
        if not logged:
            raise FeascompError(f"--tables-only: none of the grid's {len(runs)} runs is here yet", Loc(log_path),
                                note=f"run them: feascomp bench {spec.get('_path') or 'SPEC'} --out {out}")
        missing = [r for r in runs if r["command"] not in done]
        say(f"bench {spec['title']}: tables of the {len(logged)} runs in {log_path}; {len(missing)} not run yet")
        return write_results(spec, logged, out, missing=missing)
    os.makedirs(out, exist_ok=True)
    runner = runner or _subprocess_runner
    say(f"bench {spec['title']}: {len(runs)} runs, {len(runs) - len(todo)} already in {log_path}")
    started = time.perf_counter()
    for i, r in enumerate(todo, 1):
        label = f"[{i}/{len(todo)}] {r['dataset']} {r['model']} {r['method']} seed {r['seed']}"
        say(f"{label}: {r['command']}")
        t0, info = time.perf_counter(), machine()
        code, stdout, stderr = runner(r["argv"])
        entry = {k: r[k] for k in ("dataset", "model", "method", "seed", "depth", "budget", "command")}
        entry["wall_seconds"] = time.perf_counter() - t0
        entry["machine"] = info  # runs of one table may be days and machines apart
        lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
        if code == 0 and lines:
            entry["report"] = json.loads(lines[-1])
            rep = entry["report"]
            say(f"{label}: test accuracy {rep['test_accuracy']:.4f}, {rep['seconds_per_step'] * 1e3:.2f} ms/step, "
                f"{entry['wall_seconds']:.0f} s (bench {time.perf_counter() - started:.0f} s)")
        else:
            entry["error"] = {"exit": code, "stderr": stderr.strip().splitlines()[-5:]}
            say(f"{label}: FAILED (exit {code}): {' / '.join(entry['error']['stderr'])}")
        done[r["command"]] = entry
        _append(log_path, entry)
    results = [done[r["command"]] for r in runs]
    return write_results(spec, results, out)


def _subprocess_runner(argv):
    cmd = [sys.executable, "-m", "feascomp.cli", *argv]
    tty = sys.stderr.isatty()  # the run's own progress bar, live, when someone watches
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=None if tty else subprocess.PIPE, text=True)
    return p.returncode, p.stdout, p.stderr or ""


def _read_log(path) -> dict:
    done = {}
    if os.path.exists(path):
        with open(path, encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    entry = json.loads(line)
                    done[entry["command"]] = entry
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise FeascompError("not a bench result line (remove it or the file to run it again)",
                                        Loc(path, n, 1)) from None
    return done


def _append(path, entry):
    """One line per finished run, flushed and synced: a killed bench loses at most the run
    in progress (a partial last line is refused on reading, naming it)."""
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(entry) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


# tables and figures --------------------------------------------------------------------------
COLUMNS = ("Dataset", "Model", "Method", "Accuracy (%)", "Steps (k)", "Time (s)", "Step (ms)", "Seeds", "Budget")


def _pm(values, scale=1.0, digits=1):
    if not values:
        return "–"
    v = np.asarray(values, float) * scale
    return f"{v.mean():.{digits}f} ± {v.std():.{digits}f}" if len(v) > 1 else f"{v[0]:.{digits}f}"


def seconds_to(report: dict, threshold: float) -> float | None:
    """Training seconds to the first evaluation whose validation accuracy reaches
    ``threshold`` (None if none did)."""
    return next((e["seconds"] for e in report.get("evaluations", []) if e["accuracy"] >= threshold), None)


def _to_threshold(rows: list[dict], thresholds, baseline) -> None:
    """Per row and threshold: the median over seeds of the seconds to it (a seed that never
    reached it counts as infinitely slow, so the median exists only when more than half
    did; the cell says how many did), and its ratio to the baseline method's median on
    the same dataset and model."""
    for r in rows:
        r["to_threshold"] = {}
        for t in thresholds:
            times = r["_seconds_to"][t]
            median = float(np.median([np.inf if s is None else s for s in times]))
            r["to_threshold"][f"{t:g}"] = {"median_seconds": None if np.isinf(median) else median,
                                           "reached": sum(s is not None for s in times), "runs": len(times)}
    base = {(r["dataset"], r["model"]): r["to_threshold"] for r in rows if r["method"] == baseline}
    for r in rows:
        for key, got in r["to_threshold"].items():
            median, bm = got["median_seconds"], base.get((r["dataset"], r["model"]), {}).get(key, {}).get("median_seconds")
            cell = "–" if median is None else f"{median:.2f}"
            if median is not None and bm and r["method"] != baseline:
                got["ratio"] = median / bm
                cell += f" ({got['ratio']:.1f}×)" if got["ratio"] < 10 else f" ({got['ratio']:.0f}×)"
            if got["reached"] < got["runs"]:
                cell += f" [{got['reached']}/{got['runs']}]"
            r["cells"].append(cell)


def summarise(results: list[dict], thresholds=(), baseline=None) -> list[dict]:
    """One row per (dataset, model, method), in grid order: the paper's columns (test
    accuracy of the best-on-validation parameters; steps and training seconds to 99 % of
    the best validation accuracy; time per step), mean ± std over seeds; then, per
    threshold, the median training seconds to reach it (and the ratio to ``baseline``)."""
    groups: dict[tuple, list] = {}
    for r in results:
        groups.setdefault((r["dataset"], r["model"], r["method"]), []).append(r)
    rows = []
    for (dataset, model, method), rs in groups.items():
        ok = [r["report"] for r in rs if "report" in r]
        get = lambda key: [rep[key] for rep in ok if rep.get(key) is not None]  # noqa: E731
        row = {"dataset": dataset, "model": model, "method": method, "runs": len(rs), "failed": len(rs) - len(ok),
               "budget": rs[0]["budget"], "depth": rs[0].get("depth"),
               "accuracy": get("test_accuracy"), "steps_to_best": get("steps_to_best"),
               "seconds_to_best": get("seconds_to_best"), "seconds_per_step": get("seconds_per_step"),
               "updates": get("updates"), "stopped": [rep.get("stopped") for rep in ok],
               "_seconds_to": {t: [seconds_to(rep, t) for rep in ok] for t in thresholds}}
        row["cells"] = [dataset, model, method, _pm(row["accuracy"], 100), _pm(row["steps_to_best"], 1e-3, 2),
                        _pm(row["seconds_to_best"], 1, 1), _pm(row["seconds_per_step"], 1e3, 2),
                        f"{len(ok)}" + (f" ({row['failed']} failed)" if row["failed"] else ""), row["budget"]]
        rows.append(row)
    _to_threshold(rows, thresholds, baseline)
    for r in rows:
        del r["_seconds_to"]
    return rows


def columns(spec) -> tuple:
    return COLUMNS + tuple(f"To {t:g} (s)" for t in spec.get("thresholds", []))


def _machine_text(info) -> str:
    return (f"{info['cpu']} ({info['cores']} cores"
            + (f", {info['memory_bytes'] / 2**30:.0f} GiB" if info.get("memory_bytes") else "")
            + f"), Python {info['python']}, JAX {info['jax']}, {info['date']}")


def run_machines(results: list[dict]) -> list[dict]:
    """The machines the runs were measured on (each as ``machine()`` recorded it when its
    run started), in order, each with how many runs it took; runs logged before the bench
    recorded machines count as ``None``. Machines are told apart as the table names them
    (processor, cores, memory, versions, date), not by their kernel builds."""
    out: dict = {}
    for r in results:
        m = r.get("machine")
        key = _machine_text(m) if m else None
        out.setdefault(key, {"machine": m, "runs": 0})["runs"] += 1
    return list(out.values())


def markdown(spec, rows, machines, missing=()) -> str:
    if len(machines) == 1 and machines[0]["machine"]:
        measured = [f"Measured on {_machine_text(machines[0]['machine'])}."]
    else:
        measured = ["Measured on:"] + [f"- {_machine_text(m['machine']) if m['machine'] else 'a machine not recorded'}: "
                                       f"{m['runs']} run{'s' if m['runs'] > 1 else ''}" for m in machines]
    lines = [f"# {spec['title']}", "", *measured, "",
             "Accuracy: test accuracy of the best-on-validation parameters. Steps (k) and Time (s): to the first "
             "evaluation reaching 99 % of the run's best validation accuracy (training time only: no data loading, "
             "evaluation or compilation). Step: training time per step (a projection step, or one optimizer step "
             "for SGD/Adam). Mean ± std over seeds.", ""]
    if spec.get("thresholds"):
        lines += ["To A (s): median over seeds of the training seconds to the first evaluation whose validation "
                  "accuracy reaches A" + (f"; (n×): that median over {spec['baseline']}'s" if spec.get("baseline") else "")
                  + "; [r/n]: only r of n seeds reached it (– when fewer than half did).", ""]
    cols = columns(spec)
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(r["cells"]) + " |" for r in rows]
    if missing:
        lines += ["", f"Not run yet ({len(missing)} of the grid's runs; `feascomp bench` with this spec runs them): "
                  + ", ".join(f"{r['dataset']} {r['model']} {r['method']} seed {r['seed']}" for r in missing) + "."]
    return "\n".join(lines) + "\n"


def write_results(spec: dict, results: list[dict], out: str, missing=()) -> dict:
    from .files import atomic_write

    info = machine()
    machines = run_machines(results)
    rows = summarise(results, spec.get("thresholds", []), spec.get("baseline"))
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(columns(spec))
    w.writerows(r["cells"] for r in rows)
    # machine: where the tables were written; run_machines: where the runs were measured
    summary = {"title": spec["title"], "spec": spec.get("_path"), "machine": info, "run_machines": machines,
               "rows": [{k: v for k, v in r.items() if k != "cells"} for r in rows],
               "not_run": [{k: r[k] for k in ("dataset", "model", "method", "seed", "command")} for r in missing]}
    atomic_write(os.path.join(out, "table.md"), lambda fh: fh.write(markdown(spec, rows, machines, missing).encode()))
    atomic_write(os.path.join(out, "table.csv"), lambda fh: fh.write(buf.getvalue().encode()))
    atomic_write(os.path.join(out, "results.json"), lambda fh: fh.write(json.dumps(summary, indent=1).encode()))
    summary["figures"] = plot_results(results, out)
    return summary


def plot_results(results: list[dict], out: str) -> list[str]:
    """Figure 3 (validation accuracy against steps and against training time, one panel
    per dataset and model, one line per method, seeds drawn thin) and Figure 6 (time per
    step against depth, per method)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .files import atomic_write

    ok = [r for r in results if "report" in r and r["report"].get("evaluations")]
    panels = list(dict.fromkeys((r["dataset"], r["model"]) for r in ok))
    methods = list(dict.fromkeys(r["method"] for r in ok))
    colours = {m: f"C{i}" for i, m in enumerate(methods)}
    written = []

    def save(fig, name):
        buf = io.BytesIO()
        fig.tight_layout()
        fig.savefig(buf, format="png", dpi=90)
        plt.close(fig)
        path = os.path.join(out, name)
        atomic_write(path, lambda fh: fh.write(buf.getvalue()))
        written.append(path)

    for axis, name, label in (("step", "accuracy_vs_steps.png", "training steps"),
                              ("seconds", "accuracy_vs_time.png", "training time (s)")):
        if not panels:
            break
        fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
        for ax, (dataset, model) in zip(axes[0], panels):
            shown = set()
            for r in ok:
                if (r["dataset"], r["model"]) != (dataset, model):
                    continue
                ev = r["report"]["evaluations"]
                ax.plot([max(e[axis], 1e-3) for e in ev], [e["accuracy"] for e in ev], color=colours[r["method"]],
                        lw=1.2 if r["method"] not in shown else 0.6, alpha=1.0 if r["method"] not in shown else 0.5,
                        label=r["method"] if r["method"] not in shown else None)
                shown.add(r["method"])
            ax.set_xscale("log")
            ax.set_title(f"{dataset} {model}", fontsize=9)
            ax.set_xlabel(label)
            ax.set_ylabel("validation accuracy")
            ax.legend(fontsize=7)
        save(fig, name)
    depths = [r for r in ok if r.get("depth") is not None]
    if len({r["depth"] for r in depths}) > 1:
        fig, ax = plt.subplots(figsize=(5, 3.6))
        for m in methods:
            pts: dict[int, list] = {}
            for r in depths:
                if r["method"] == m:
                    pts.setdefault(r["depth"], []).append(r["report"]["seconds_per_step"] * 1e3)
            if pts:
                ds = sorted(pts)
                ax.plot(ds, [float(np.median(pts[d])) for d in ds], marker="o", color=colours[m], label=m)
        ax.set_yscale("log")
        ax.set_xlabel("hidden layers")
        ax.set_ylabel("time per step (ms, median)")
        ax.legend(fontsize=7)
        save(fig, "step_time_vs_depth.png")
    return written
