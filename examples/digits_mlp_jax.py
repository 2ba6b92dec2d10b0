"""The digits MLP as a plain JAX function: `feascomp train examples/digits_mlp_jax.py:mlp --dataset digits`."""
import jax
import numpy as np


def mlp(params, x):
    h = jax.nn.relu(x @ params["W1"] + params["b1"])
    return h @ params["W2"]


def init_params(seed):
    rng = np.random.default_rng(seed)
    return {
        "W1": (rng.normal(size=(64, 32)) * np.sqrt(2 / 64)).astype(np.float32),
        "b1": np.zeros(32, np.float32),
        "W2": (rng.normal(size=(32, 10)) * np.sqrt(2 / 32)).astype(np.float32),
    }
