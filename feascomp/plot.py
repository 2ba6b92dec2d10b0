"""``feascomp plot``: residual norms and test accuracy against projection steps."""
from __future__ import annotations

import csv
import io

from .errors import FeascompError, Loc


def plot_history(csv_path: str, png_path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise FeascompError("plotting needs matplotlib: pip install 'feascomp[examples]'") from None
    try:
        with open(csv_path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except FileNotFoundError:
        raise FeascompError("no such file", Loc(csv_path)) from None
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise FeascompError(f"cannot read residual CSV: {e}", Loc(csv_path)) from None
    if not rows or not {"step", "residual"} <= set(rows[0]):
        raise FeascompError("not a feascomp residual CSV (needs step and residual columns)", Loc(csv_path))
    try:
        steps = [int(r["step"]) for r in rows]
        fams = [c for c in rows[0] if c.startswith("dist:")]
        series = {"algorithm residual": [float(r["residual"]) for r in rows]}
        series.update({c[5:]: [float(r[c]) for r in rows] for c in fams})
        split = "validation" if "validation_accuracy" in rows[0] else "test"
        acc = [(int(r["step"]), float(r[f"{split}_accuracy"])) for r in rows if r.get(f"{split}_accuracy")]
    except (KeyError, ValueError) as e:
        raise FeascompError(f"malformed residual CSV: {e}", Loc(csv_path)) from None
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 7), sharex=True)
    for name, ys in series.items():
        ax1.plot(steps, [max(y, 1e-12) for y in ys], lw=1.5 if name == "algorithm residual" else 0.8, label=name)
    ax1.set_yscale("log")
    ax1.set_ylabel("residual / distance to constraint")
    ax1.legend(fontsize=7, ncol=3)
    if acc:
        ax2.plot([s for s, _ in acc], [a for _, a in acc], marker="o")
    ax2.set_ylabel(f"{split} accuracy")
    ax2.set_xlabel("projection step")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    from .files import atomic_write

    atomic_write(png_path, lambda fh: fh.write(buf.getvalue()))
