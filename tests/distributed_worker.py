"""Run by tests/test_distributed.py in a subprocess with several (forced) CPU devices:
each configuration trained for 5 updates on 1, 2 and 4 devices from the same start, and
the parameters written to an .npz per configuration and device count.

    XLA_FLAGS=--xla_force_host_platform_device_count=4 python tests/distributed_worker.py OUT CONFIGS_JSON
"""
import json
import os
import sys

import numpy as np

import feascomp
from feascomp import data


def main():
    out, configs = sys.argv[1], json.loads(sys.argv[2])
    ds = data.load("digits")
    report = {}
    for name, kw in configs.items():
        kw = dict(kw)
        model = kw.pop("model")
        batch = kw.pop("batch_size", 16)
        for n in kw.pop("devices", (1, 2, 4)):  # a number of devices, or a mesh ("data=2,model=2")
            where = {"mesh": n} if isinstance(n, str) else {"devices": n}
            s = feascomp.compile(model, batch_size=batch, steps=3, **where, **kw)
            st = s.init(s.init_params(0))
            for u in range(5):
                rows = slice(batch * u, batch * (u + 1))
                p, st, info = s.update(st, ds.x_train[rows], ds.y_train[rows])
            np.savez(os.path.join(out, f"{name}-{n}.npz"), **{k: np.asarray(v) for k, v in p.items()})
            shard = None
            if st.edges is not None:  # what one device holds of the carried state
                shard = sum(v.addressable_shards[0].data.nbytes for v in st.edges.values())
            report[f"{name}-{n}"] = {"residual": float(np.asarray(info["residual"])[-1]), "mesh": dict(s.mesh),
                                     "device_state_bytes": s.device_state_bytes, "state_bytes": s.state_bytes,
                                     "measured_device_state_bytes": shard,
                                     # what the lowering chose for this many devices
                                     "boundaries": s.program.boundaries,
                                     "max_kernels": sorted({i.prim.opts["kernel"] for i in s.program.info.values()
                                                            if i.prim is not None and i.family.kind in ("max", "min")}),
                                     "param_bytes": sum(np.asarray(v).nbytes for v in p.values())}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
