"""Native kernels: XLA FFI custom calls for CPU, compiled from C++ on first use.

One library so far, ``dot_project.cc``: the fused dot projection; the max projection (a
max-pool's: its few largest inputs found in one pass); the Douglas-Rachford step
on a dense dot family's input edges (one pass in the second colour, two in the first: the
materialized lowering's fused path), also where the input is folded into the family (only
the b-edges stored: the ``*_fixed`` kernels); and ``fill``, which writes a forward pass's edge copies
into donated buffers. Each does what XLA on CPU cannot fuse (several outputs written in one
pass, reductions that read their producers) in one pass over cache-sized blocks of rows.
The C++ mirrors ``feascomp/primitives/dot.py`` and ``maxmin.py``, which stay the reference
(and the fallback): tests/test_kernels.py and tests/test_fused.py check them against each other.

Build: the source is compiled with the system C++ compiler (``$CXX`` or ``g++``) against
the XLA FFI headers that jaxlib ships, into a cache folder (``$FEASCOMP_CACHE`` or
``~/.cache/feascomp``; the file name carries a hash of the source, the compiler, the flags,
jaxlib's version and the CPU's feature flags, since it is built with ``-march=native``). It
is written to a temporary name and renamed, so a concurrent or interrupted build never
leaves a partial library. Where no compiler works, :func:`load` returns False with the
reason in :func:`status`, and callers use the XLA implementation.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

SOURCES = {"dot_project": Path(__file__).with_name("dot_project.cc")}
# the XLA FFI targets each library defines, per function and dtype: the compute dtype, or
# for the edge kernels "compute/storage" where the edges are stored in a 16-bit type
# (--edge-dtype: float16 or bfloat16, arithmetic in float32)
_EDGE_STORAGE = {"float32": "f32", "float64": "f64", "float32/float16": "f32_f16", "float32/bfloat16": "f32_bf16"}
TARGETS = {"dot_project": {
    "dot_project": {"float32": "feascomp_dot_project_f32", "float64": "feascomp_dot_project_f64"},
    "max_project": {"float32": "feascomp_max_project_f32", "float64": "feascomp_max_project_f64"},
    "keep": {"any": "feascomp_keep"},
    **{fn: {k: f"feascomp_{fn}_{v}" for k, v in _EDGE_STORAGE.items()}
       for fn in ("dot_dr_step", "dot_dr_project", "dot_dr_update", "fill", "dot_dr_step_fixed", "dot_dr_project_fixed",
                  "dot_dr_update_fixed", "dot_dr_project_chain", "dot_dr_project_fixed_chain")},
}}


def _target(fn: str, compute, storage) -> str:
    """The FFI target of edge kernel ``fn`` for arithmetic in ``compute`` on edges stored as
    ``storage`` (numpy dtypes or their names)."""
    compute, storage = str(compute), str(storage)
    key = compute if storage == compute else f"{compute}/{storage}"
    try:
        return TARGETS["dot_project"][fn][key]
    except KeyError:
        raise ValueError(f"{fn}: no kernel for {storage} edges with {compute} arithmetic") from None


# -fopenmp-simd: honour the source's `omp simd reduction` loops (vectorised sums) without
# OpenMP's runtime or any global fast-math
FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fopenmp-simd", "-std=c++17", "-shared", "-fPIC", "-pthread"]

_lock = threading.Lock()
_loaded: dict[str, bool] = {}
_status: dict[str, str] = {}


def cache_dir() -> Path:
    root = os.environ.get("FEASCOMP_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "feascomp")
    return Path(root) / "kernels"


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith(("flags", "Features")):
                    return line
    except OSError:
        pass
    return platform.processor()


def _compiler() -> str | None:
    cxx = os.environ.get("CXX") or "g++"
    return shutil.which(cxx)


def _library_path(name: str, cxx: str) -> Path:
    import jax
    import jaxlib

    h = hashlib.sha256()
    for part in (SOURCES[name].read_bytes(), cxx.encode(), " ".join(FLAGS).encode(),
                 jaxlib.__version__.encode(), jax.ffi.include_dir().encode(), _cpu_flags().encode(),
                 platform.machine().encode()):
        h.update(part)
        h.update(b"\0")
    return cache_dir() / f"{name}-{h.hexdigest()[:16]}.so"


def _build(name: str, cxx: str, out: Path) -> None:
    import jax

    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=out.stem + ".", suffix=".tmp.so", dir=out.parent)
    os.close(fd)
    try:
        cmd = [cxx, *FLAGS, "-I", jax.ffi.include_dir(), str(SOURCES[name]), "-o", tmp]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if res.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{res.stderr.strip()[-2000:]}")
        os.replace(tmp, out)  # atomic: readers see the old name absent or the whole library
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load(name: str = "dot_project") -> bool:
    """Build (once per machine) and register kernel ``name`` with XLA; False if it cannot be
    built here (the reason is in :func:`status`)."""
    with _lock:
        if name in _loaded:
            return _loaded[name]
        ok = False
        try:
            import jax

            cxx = _compiler()
            if cxx is None:
                raise RuntimeError("no C++ compiler found (set CXX or install g++)")
            path = _library_path(name, cxx)
            if not path.exists():
                _build(name, cxx, path)
            lib = ctypes.cdll.LoadLibrary(str(path))
            for target in (t for per_dtype in TARGETS[name].values() for t in per_dtype.values()):
                jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, target)), platform="cpu")
            ok = True
            _status[name] = f"built: {path}"
        except Exception as exc:  # any failure leaves the XLA implementation in use
            _status[name] = f"unavailable: {exc}"
        _loaded[name] = ok
        return ok


def status(name: str = "dot_project") -> str:
    """How kernel ``name`` stands: not yet loaded, built (where), or unavailable (why)."""
    return _status.get(name, "not loaded")


def _rows(shape) -> tuple[int, int, int]:
    """Edges [..., m, n] as the kernels take them: N rows (the leading axes) of m nodes."""
    import math

    return math.prod(shape[:-2]), shape[-2], shape[-1]


def dot_project(a0, b0, z0, w):
    """The fused dot projection of rows: a0, b0 [N, n], z0 [N], w [N] (jax arrays of one
    float dtype); returns (a, b, z). Call :func:`load` first."""
    import jax

    dtype = a0.dtype
    target = TARGETS["dot_project"]["dot_project"][str(dtype)]
    out = (jax.ShapeDtypeStruct(a0.shape, dtype), jax.ShapeDtypeStruct(a0.shape, dtype),
           jax.ShapeDtypeStruct(z0.shape, dtype))
    return jax.ffi.ffi_call(target, out, vmap_method="broadcast_all")(a0, b0, z0, w)


def keep(x):
    """``x`` materialized once, as a fusion boundary: XLA on CPU recomputes a shared
    elementwise producer in each of its consumers' loop fusions (and drops
    ``optimization_barrier`` before fusing); a custom call's operand is computed once. The
    result aliases the operand: nothing is copied."""
    import jax

    call = jax.ffi.ffi_call(TARGETS["dot_project"]["keep"]["any"], jax.ShapeDtypeStruct(x.shape, x.dtype),
                            input_output_aliases={0: 0}, vmap_method="broadcast_all")
    return call(x)


def max_project(x0, y0, w):
    """The max projection of rows (primitives/maxmin.py's ``project_max``, its reference):
    x0 [N, n], y0 [N], w [N] of one float dtype; returns (x [N, n], y [N])."""
    import jax

    target = TARGETS["dot_project"]["max_project"][str(x0.dtype)]
    out = (jax.ShapeDtypeStruct(x0.shape, x0.dtype), jax.ShapeDtypeStruct(y0.shape, x0.dtype))
    return jax.ffi.ffi_call(target, out, vmap_method="broadcast_all")(x0, y0, w)


def dot_dr_step(za, zb, pa, pb, c0, w, relax, groups: int):
    """One DR step on a dense dot family's input edges, in place (dot_project.cc's
    ``dr_step``): za, zb [N, m, n]; pa [N, n], pb [m, n] (the edges' values under the other
    colour's projection); c0, w [N, m]; relax a scalar. Returns (za', zb', y [N, m],
    moved [N, m], sum over m of za' [N, n], per-group sums over N of zb' [groups, m, n]).
    za, zb may be stored in float16 or bfloat16 with the rest float32 (--edge-dtype): the
    arithmetic is float32 on the widened edges, za' and zb' come back rounded in the edges'
    dtype, and the sums are of them as stored. Call :func:`load` first."""
    import jax
    import jax.numpy as jnp

    dtype = c0.dtype  # the arithmetic's; the edges may be stored in a 16-bit type
    N, m, n = _rows(za.shape)
    target = _target("dot_dr_step", dtype, za.dtype)
    out = (jax.ShapeDtypeStruct(za.shape, za.dtype), jax.ShapeDtypeStruct(zb.shape, zb.dtype),
           jax.ShapeDtypeStruct((N, m), dtype), jax.ShapeDtypeStruct((N, m), dtype),
           jax.ShapeDtypeStruct((N, n), dtype), jax.ShapeDtypeStruct((groups, m, n), dtype))
    call = jax.ffi.ffi_call(target, out, input_output_aliases={0: 0, 1: 1}, vmap_method="sequential")
    return call(za, zb, pa, pb, c0, w, jnp.asarray(relax, dtype))


def dot_dr_project(za, zb, c0, w, groups: int, reflect: bool = True, edges: bool = False):
    """The first pass of a DR step on a dense dot family of the first colour
    (dot_project.cc's ``dr_project``): za, zb [N, m, n]; c0, w [N, m]. Returns (y [N, m],
    per-node coefficients [N, m, 6], the a-edges summed over m [N, n], the b-edges summed
    over the rows of each group [groups, m, n]): of the reflected edges 2 P z - z, or with
    ``reflect=False`` of the projected edges P z. ``edges``: also return za and zb first,
    unchanged, as aliases of the inputs (the ``_chain`` target) -- pass those to
    :func:`dot_dr_update`, so that XLA need not copy the edges to keep them for the in-place
    update; not where the edges live on after the call (the shadow: XLA would copy them)."""
    import jax
    import jax.numpy as jnp

    dtype = c0.dtype
    N, m, n = _rows(za.shape)
    out = (jax.ShapeDtypeStruct((N, m), dtype), jax.ShapeDtypeStruct((N, m, 6), dtype),
           jax.ShapeDtypeStruct((N, n), dtype), jax.ShapeDtypeStruct((groups, m, n), dtype))
    mix = jnp.asarray([2, 1] if reflect else [1, 0], dtype)
    if not edges:
        return jax.ffi.ffi_call(_target("dot_dr_project", dtype, za.dtype), out, vmap_method="sequential")(
            za, zb, c0, w, mix)
    out = (jax.ShapeDtypeStruct(za.shape, za.dtype), jax.ShapeDtypeStruct(zb.shape, zb.dtype)) + out
    call = jax.ffi.ffi_call(_target("dot_dr_project_chain", dtype, za.dtype), out, input_output_aliases={0: 0, 1: 1},
                            vmap_method="sequential")
    return call(za, zb, c0, w, mix)


def dot_dr_update(za, zb, coef, va, vb, relax):
    """The second pass (``dr_update``): za += 2 r (va - a), zb += 2 r (vb - b) in place, a
    and b from ``dot_dr_project``'s coefficients; va [N, n], vb [m, n]. Returns (za', zb',
    the node's squared move [N, m])."""
    import jax
    import jax.numpy as jnp

    dtype = coef.dtype
    N, m, n = _rows(za.shape)
    target = _target("dot_dr_update", dtype, za.dtype)
    out = (jax.ShapeDtypeStruct(za.shape, za.dtype), jax.ShapeDtypeStruct(zb.shape, zb.dtype),
           jax.ShapeDtypeStruct((N, m), dtype))
    call = jax.ffi.ffi_call(target, out, input_output_aliases={0: 0, 1: 1}, vmap_method="sequential")
    return call(za, zb, coef, va, vb, jnp.asarray(relax, dtype))


def dot_dr_step_fixed(zb, x, pb, c0, w, relax, groups: int):
    """``dot_dr_step`` where port a is the input folded into the family (dot_project.cc's
    ``dr_step_fixed``): the a-row of node (i, j) is x[i] [N, n] in every state; zb [N, m, n]
    (updated in place), pb [m, n], c0, w [N, m]. Returns (zb', y [N, m], moved [N, m],
    per-group sums over N of zb' [groups, m, n])."""
    import jax
    import jax.numpy as jnp

    dtype = c0.dtype
    N, m, n = _rows(zb.shape)
    out = (jax.ShapeDtypeStruct(zb.shape, zb.dtype), jax.ShapeDtypeStruct((N, m), dtype),
           jax.ShapeDtypeStruct((N, m), dtype), jax.ShapeDtypeStruct((groups, m, n), dtype))
    call = jax.ffi.ffi_call(_target("dot_dr_step_fixed", dtype, zb.dtype), out, input_output_aliases={0: 0},
                            vmap_method="sequential")
    return call(zb, x, pb, c0, w, jnp.asarray(relax, dtype))


def dot_dr_project_fixed(zb, x, c0, w, groups: int, reflect: bool = True, edges: bool = False):
    """``dot_dr_project`` with port a the folded input x [N, n]: returns (y [N, m], the
    per-node multiplier mu [N, m] (b = zb - mu x), the groups' sums of 2 b - zb, or with
    ``reflect=False`` of b, [groups, m, n]); ``edges``: zb first, passed through (as
    ``dot_dr_project``)."""
    import jax
    import jax.numpy as jnp

    dtype = c0.dtype
    N, m, n = _rows(zb.shape)
    out = (jax.ShapeDtypeStruct((N, m), dtype), jax.ShapeDtypeStruct((N, m), dtype),
           jax.ShapeDtypeStruct((groups, m, n), dtype))
    mix = jnp.asarray([2, 1] if reflect else [1, 0], dtype)
    if not edges:
        return jax.ffi.ffi_call(_target("dot_dr_project_fixed", dtype, zb.dtype), out, vmap_method="sequential")(
            zb, x, c0, w, mix)
    out = (jax.ShapeDtypeStruct(zb.shape, zb.dtype),) + out
    call = jax.ffi.ffi_call(_target("dot_dr_project_fixed_chain", dtype, zb.dtype), out, input_output_aliases={0: 0},
                            vmap_method="sequential")
    return call(zb, x, c0, w, mix)


def dot_dr_update_fixed(zb, mu, x, vb, relax):
    """``dot_dr_update`` with port a the folded input: zb += 2 r (vb - (zb - mu x)) in
    place; returns (zb', the node's squared move [N, m])."""
    import jax
    import jax.numpy as jnp

    dtype = mu.dtype
    N, m, n = _rows(zb.shape)
    out = (jax.ShapeDtypeStruct(zb.shape, zb.dtype), jax.ShapeDtypeStruct((N, m), dtype))
    call = jax.ffi.ffi_call(_target("dot_dr_update_fixed", dtype, zb.dtype), out, input_output_aliases={0: 0},
                            vmap_method="sequential")
    return call(zb, mu, x, vb, jnp.asarray(relax, dtype))


def fill(donor, src, by_row: bool):
    """``donor`` [N, m, n] overwritten in place (its buffer reused) with copies of ``src``:
    out[i, j] = src[i] (``by_row``, src [N, n]) or src[j] (src [m, n]), rounded to the
    donor's dtype where it is a 16-bit edge storage."""
    import jax
    import jax.numpy as jnp

    target = _target("fill", src.dtype, donor.dtype)
    call = jax.ffi.ffi_call(target, jax.ShapeDtypeStruct(donor.shape, donor.dtype), input_output_aliases={0: 0},
                            vmap_method="sequential")
    return call(donor, src, jnp.asarray([1 if by_row else 0], src.dtype))
