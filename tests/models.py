"""Random small model sources shared by the tests."""


def mlp_source(widths, bias, readout=False, loss="cross_entropy(logits)", dtype="f64", activation="relu"):
    """An MLP widths[0] -> ... -> widths[-1]; with ``readout`` the logits read every hidden
    layer (logits = h0 @ R0 + h1 @ R1 + ...)."""
    lines = ["model r", f"input x : {dtype}[{widths[0]}]"]
    hidden = len(widths) - 2
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        if i < hidden:
            lines.append(f"param W{i} : {dtype}[{a}, {b}] = normal")
            if bias[i]:
                lines.append(f"param b{i} : {dtype}[{b}] = normal")
    if readout and hidden:
        for i in range(hidden):
            lines.append(f"param R{i} : {dtype}[{widths[i + 1]}, {widths[-1]}] = normal")
    else:
        lines.append(f"param W{hidden} : {dtype}[{widths[-2]}, {widths[-1]}] = normal")
    h = "x"
    for i in range(hidden):
        pre = f"{h} @ W{i}" + (f" + b{i}" if bias[i] else "")
        lines.append(f"h{i} = {activation}({pre})")
        h = f"h{i}"
    if readout and hidden:
        lines.append("output logits = " + " + ".join(f"h{i} @ R{i}" for i in range(hidden)))
    else:
        lines.append(f"output logits = {h} @ W{hidden}")
    lines.append(f"loss {loss}")
    return "\n".join(lines) + "\n"


def fit(solver, ds, updates, seed=0, params=None):
    """``updates`` solver updates over shuffled full batches of ds's training split;
    returns (params, state, info) of the last update."""
    import numpy as np

    from feascomp import data

    state = solver.init(params if params is not None else solver.init_params(0))
    order = data.batches(len(ds.x_train), solver.batch_size, np.random.default_rng(seed))
    for _ in range(updates):
        idx = next(order)
        params, state, info = solver.update(state, ds.x_train[idx], ds.y_train[idx])
    return params, state, info


def update_once(tensor, batch, backend, algorithm, params, x, y, weighted, steps=1, **options):
    """One solver update (K = ``steps``) in float64 on ``backend``: (params, step residuals)
    as NumPy. Input edges are stored (elide_inputs=False) so that AP's residual covers every
    edge, as the scalar-graph oracle's does."""
    import numpy as np

    import feascomp

    solver = feascomp.compile(tensor, batch_size=batch, algorithm=algorithm, steps=steps, dtype="float64",
                              backend=backend, weighted=weighted, elide_inputs=False, **options)
    p, _, info = solver.update(solver.init(params), x, y)
    return {k: np.asarray(v) for k, v in p.items()}, np.asarray(info["residual"])


def assert_matches_oracle(tensor, batch, algorithm, params, x, y, weighted, rtol=1e-9, residuals=True, **options):
    """The jax backend's update equals the numpy scalar-graph oracle's (parameters, and the
    step residuals unless ``residuals`` is False); returns the jax parameters."""
    import numpy as np

    pj, rj = update_once(tensor, batch, "jax", algorithm, params, x, y, weighted, **options)
    pn, rn = update_once(tensor, batch, "numpy", algorithm, params, x, y, weighted, **options)
    for k in pj:
        np.testing.assert_allclose(pj[k], pn[k], rtol=rtol, atol=1e-12, err_msg=k)
    if residuals:
        np.testing.assert_allclose(rj, rn, rtol=rtol, atol=1e-12)
    return pj
