"""Device meshes: the batch split over a ``data`` axis (and the units of wide dense layers
over a ``model`` axis), through JAX's own sharding (docs/distributed.md).

A mesh is given as a spec, ``(("data", 4),)`` or ``(("data", 2), ("model", 2))``
(``--mesh data=2,model=2``, ``--devices 4``, or ``feascomp.compile(mesh=...)`` with a
spec, a string, a dict or a ``jax.sharding.Mesh``), and built over ``jax.devices()`` --
every device of every process once ``jax.distributed`` is initialised. Options hold the
spec (a value); the Mesh object is built here, once per spec.
"""
from __future__ import annotations

import functools
import math
import os
import sys
import threading

from ..errors import FeascompError

AXES = ("data", "model")


def parse(text: str) -> tuple[tuple[str, int], ...]:
    """``data=4`` or ``data=2,model=2`` as a spec, or a FeascompError naming what is wrong."""
    spec = []
    for part in text.split(","):
        name, eq, size = part.strip().partition("=")
        if not eq or name not in AXES or not size.strip().isdigit() or int(size) < 1:
            raise FeascompError(f"--mesh {text!r}: each axis is NAME=SIZE with NAME one of {', '.join(AXES)} and a "
                                f"positive SIZE (e.g. data=4 or data=2,model=2)")
        spec.append((name, int(size)))
    return normalize(tuple(spec))


def normalize(mesh) -> tuple[tuple[str, int], ...]:
    """A spec from what ``feascomp.compile(mesh=...)`` takes: None or () (no mesh given),
    a spec, a ``"data=4"`` string, a ``{"data": 4}`` dict or a ``jax.sharding.Mesh``."""
    if mesh is None or mesh == ():
        return ()
    if isinstance(mesh, str):
        return parse(mesh)
    if isinstance(mesh, dict):
        mesh = tuple(mesh.items())
    elif hasattr(mesh, "axis_names") and hasattr(mesh, "devices"):  # a jax.sharding.Mesh
        mesh = tuple(zip(mesh.axis_names, mesh.devices.shape))
    try:
        spec = tuple((str(n), int(s)) for n, s in mesh)
    except (TypeError, ValueError):
        raise FeascompError(f"a mesh is a spec like (('data', 4),), 'data=4' or a jax Mesh, not {mesh!r}") from None
    names = [n for n, _ in spec]
    if any(n not in AXES for n in names) or len(set(names)) != len(names) or any(s < 1 for _, s in spec):
        raise FeascompError(f"mesh axes are {' and '.join(AXES)}, each once with a positive size; got {spec}")
    if "data" not in names:
        spec = (("data", 1),) + spec
    return tuple(sorted(spec, key=lambda a: AXES.index(a[0])))


def size(spec, axis: str) -> int:
    return dict(spec).get(axis, 1)


def device_count() -> int:
    import jax

    return jax.device_count()


@functools.cache
def build(spec: tuple):
    """The ``jax.sharding.Mesh`` of a spec (its first devices in ``jax.devices()`` order),
    or None for a single device; CompileOptions.mesh_spec has refused a spec that needs
    more devices than JAX sees."""
    import jax
    import numpy as np
    from jax.sharding import Mesh

    n = math.prod(s for _, s in spec)
    if n <= 1:
        return None
    return Mesh(np.array(jax.devices()[:n]).reshape([s for _, s in spec]), tuple(a for a, _ in spec))


def spec_text(spec) -> str:
    return ",".join(f"{a}={s}" for a, s in spec) or "data=1"


def describe_devices() -> str:
    import jax

    kinds = sorted({d.platform for d in jax.devices()})
    return (f"{jax.device_count()} {'/'.join(kinds)} device(s) over {jax.process_count()} process(es); on CPU, more "
            "devices in one process come from XLA_FLAGS=--xla_force_host_platform_device_count=N, more processes "
            "from --num-processes")


def initialize(coordinator: str | None, num_processes: int | None, process_id: int | None,
               timeout: int = 300) -> None:
    """Join the processes of a multi-process run through ``jax.distributed`` (before any
    other JAX call): with the coordinator's HOST:PORT, the number of processes and this
    one's id, or -- all three omitted -- JAX's own detection (SLURM, Open MPI, ...). On
    CPU the collectives are gloo's. A coordinator that does not answer within ``timeout``
    seconds, or an inconsistent set of flags, is a FeascompError naming it."""
    import jax

    given = [v is not None for v in (coordinator, num_processes, process_id)]
    if any(given) and not all(given):
        raise FeascompError("a multi-process run needs --coordinator HOST:PORT, --num-processes P and --process-id I "
                            "together (or none of them, for JAX's cluster detection)")
    if num_processes is not None and not 0 <= process_id < num_processes:
        raise FeascompError(f"--process-id {process_id} must lie in [0, {num_processes}) (--num-processes)")
    if coordinator is not None:
        host, _, port = coordinator.rpartition(":")
        if not host or not port.isdigit():
            raise FeascompError(f"--coordinator {coordinator!r}: expected HOST:PORT")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    # JAX aborts the process (a C++ fatal error, not an exception) when the others do not
    # join in time: a watchdog reports it first, as an error, and exits 2
    done = threading.Event()
    if coordinator is None:
        who = "JAX's cluster detection found no complete set of processes"
    elif process_id == 0:
        who = f"the other {num_processes - 1} process(es) did not join the coordinator at {coordinator}"
    else:
        who = f"the coordinator at {coordinator} (process 0) did not answer, or not every process joined it"

    def watchdog():
        if not done.wait(timeout):
            sys.stderr.write(f"error: joining the multi-process run failed within {timeout} s (--init-timeout): {who}\n")
            sys.stderr.flush()
            os._exit(2)

    threading.Thread(target=watchdog, daemon=True, name="feascomp-init-watchdog").start()
    try:
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id,
                                   initialization_timeout=timeout + 60)
    except Exception as e:  # noqa: BLE001 - JAX raises several types for one cause
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FeascompError(f"joining the multi-process run failed: {first} ({who})") from None
    finally:
        done.set()


def agree(digest: str, what: str) -> None:
    """Check that every process computed the same ``digest`` (of the model and options):
    a FeascompError naming the processes that differ from process 0."""
    import jax

    if jax.process_count() == 1:
        return
    import numpy as np
    from jax.experimental import multihost_utils

    mine = np.frombuffer(bytes.fromhex(digest), np.uint8)
    every = np.asarray(multihost_utils.process_allgather(mine))
    differ = [i for i in range(every.shape[0]) if not np.array_equal(every[i], every[0])]
    if differ:
        raise FeascompError(f"processes {', '.join(map(str, differ))} were given another {what} than process 0: every "
                            "process must run the same command on the same files")
