"""File formats of the datasets a user brings (nothing is downloaded): IDX (MNIST,
Fashion-MNIST; gzip-compressed or not), CIFAR-10's python pickle batches, HIGGS's csv (or
csv.gz), and plain UTF-8 text. Each reader checks what it reads and names the file in its
error (a :class:`FeascompError` located at the file)."""
from __future__ import annotations

import gzip
import io
import os
import pickle

import numpy as np

from .errors import FeascompError, Loc


def _fail(path: str, message: str):
    raise FeascompError(message, Loc(os.fspath(path)))


def _open(path: str):
    """A binary file, gunzipped on the fly when its first bytes say gzip."""
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        _fail(path, "no such file")
    except IsADirectoryError:
        _fail(path, "is a directory, not a data file")
    if fh.read(2) == b"\x1f\x8b":
        fh.seek(0)
        return gzip.GzipFile(fileobj=fh)
    fh.seek(0)
    return fh


def _read_all(path: str) -> bytes:
    fh = _open(path)
    try:
        with fh:
            return fh.read()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        _fail(path, f"damaged compressed file ({type(e).__name__}: {e})")


# IDX ---------------------------------------------------------------------------------------
_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
              0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: str, ndim: int) -> np.ndarray:
    """An IDX array (the format of LeCun's MNIST files): two zero bytes, a type code, the
    number of dimensions, each dimension as a big-endian uint32, then the data."""
    raw = _read_all(path)
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] not in _IDX_TYPES:
        _fail(path, f"not an IDX file (magic number {raw[:4].hex() or 'missing'}; IDX starts 0000 08..)")
    if raw[3] != ndim:
        kind = {1: "labels", 3: "images"}.get(ndim, f"{ndim}-d data")
        _fail(path, f"an IDX file of {raw[3]} dimensions, expected {kind} ({ndim})")
    header = 4 + 4 * ndim
    if len(raw) < header:
        _fail(path, "truncated IDX header")
    shape = tuple(int(d) for d in np.frombuffer(raw[4:header], ">u4"))
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    want = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != want:
        _fail(path, f"truncated or padded: the header declares {'x'.join(map(str, shape))} values "
                    f"({want} bytes) but {len(raw) - header} bytes follow")
    return np.frombuffer(raw, dtype, offset=header).reshape(shape)


def read_idx_pair(folder: str, prefix: str, classes: int = 10):
    """Images (flattened, scaled to [0, 1]) and labels of ``prefix``-images-idx3-ubyte[.gz]
    and ``prefix``-labels-idx1-ubyte[.gz] in ``folder``."""
    images = _find(folder, f"{prefix}-images-idx3-ubyte")
    labels = _find(folder, f"{prefix}-labels-idx1-ubyte")
    x, y = read_idx(images, 3), read_idx(labels, 1)
    if len(x) != len(y):
        _fail(labels, f"{len(y)} labels for the {len(x)} images of {os.path.basename(images)}")
    check_labels(labels, y, classes)
    return x.reshape(len(x), -1).astype(np.float32) / 255.0, y.astype(np.int64)


def _find(folder: str, stem: str) -> str:
    for name in (stem + ".gz", stem):
        path = os.path.join(folder, name)
        if os.path.exists(path):
            return path
    _fail(folder, f"no {stem}.gz or {stem} in this folder")


def check_labels(path: str, y: np.ndarray, classes: int) -> None:
    bad = np.flatnonzero((y < 0) | (y >= classes))
    if bad.size:
        _fail(path, f"label {y[bad[0]]} of sample {bad[0]} is out of range (the {classes} classes are 0..{classes - 1})")


# CIFAR-10 ----------------------------------------------------------------------------------
class _ArraysOnly(pickle.Unpickler):
    """CIFAR-10's batches are pickled dicts of NumPy arrays and lists: anything else in a
    pickle (which could run code) is refused."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}  # protocol 2 pickles of bytes

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def read_cifar_batch(path: str):
    """One pickled batch: images as N x 3072 uint8 rows (channel-major, 3 x 32 x 32) and
    N labels in 0..9."""
    raw = _read_all(path)
    try:
        d = _ArraysOnly(io.BytesIO(raw), encoding="bytes").load()
    except Exception as e:  # noqa: BLE001 - whatever a damaged or foreign pickle raises
        _fail(path, f"not a CIFAR-10 python batch ({type(e).__name__}: {e})")
    if not isinstance(d, dict) or b"data" not in d or b"labels" not in d:
        _fail(path, "not a CIFAR-10 python batch (a pickled dict with b'data' and b'labels')")
    x, y = np.asarray(d[b"data"]), np.asarray(d[b"labels"])
    if x.ndim != 2 or x.shape[1] != 3072 or x.dtype != np.uint8:
        _fail(path, f"data has shape {list(x.shape)} of {x.dtype}; CIFAR-10 rows are 3072 uint8 values")
    if y.shape != (len(x),):
        _fail(path, f"{y.size} labels for {len(x)} images")
    check_labels(path, y.astype(np.int64), 10)
    return x, y.astype(np.int64)


def read_cifar10(folder: str):
    """data_batch_1..5 (train) and test_batch in ``folder``; images as flat 32 x 32 x 3
    (height, width, channel: reshape ``[32, 32, 3]`` in a model) rows, standardised per
    channel with the training set's mean and deviation."""
    names = [f"data_batch_{i}" for i in range(1, 6)]
    present = [n for n in names if os.path.exists(os.path.join(folder, n))]
    if not present:
        _fail(folder, "no CIFAR-10 python batches (data_batch_1 ... data_batch_5, test_batch) in this folder")
    train = [read_cifar_batch(os.path.join(folder, n)) for n in present]
    test = read_cifar_batch(_find(folder, "test_batch"))
    hwc = lambda x: x.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).astype(np.float32) / 255.0  # noqa: E731
    xtr, xte = hwc(np.concatenate([b[0] for b in train])), hwc(test[0])
    mean, std = xtr.mean(axis=(0, 1, 2)), xtr.std(axis=(0, 1, 2)) + 1e-8
    flat = lambda x: ((x - mean) / std).reshape(len(x), -1).astype(np.float32)  # noqa: E731
    return flat(xtr), np.concatenate([b[1] for b in train]), flat(xte), test[1]


# HIGGS -------------------------------------------------------------------------------------
HIGGS_TEST = 500_000  # the UCI release's own split: its last 500,000 rows are the test set


def read_higgs(path: str, limit: int | None = None):
    """Rows ``label,feature,...`` (csv or csv.gz); the label 0 or 1. The test set is the
    last 500,000 rows of the full file (UCI's split), the last 20 % of a shorter one;
    features standardised with the training rows' mean and deviation."""
    fh = _open(path)
    try:
        with fh:
            rows = np.loadtxt(io.TextIOWrapper(fh, encoding="utf-8"), delimiter=",", dtype=np.float64, ndmin=2,
                              max_rows=limit)
    except ValueError as e:
        _fail(path, f"not a HIGGS csv (numbers separated by commas): {e}")
    except (OSError, EOFError, UnicodeDecodeError) as e:
        _fail(path, f"damaged file ({type(e).__name__}: {e})")
    if rows.size == 0 or rows.shape[1] < 2:
        _fail(path, "no rows of a label and at least one feature")
    bad = np.argwhere(~np.isfinite(rows))
    if bad.size:
        r, c = bad[0]
        _fail(path, f"row {r + 1}, column {c + 1} is not a finite number ({rows[r, c]})")
    y = rows[:, 0]
    wrong = np.flatnonzero((y != 0) & (y != 1))
    if wrong.size:
        _fail(path, f"row {wrong[0] + 1}: the label (first column) is {y[wrong[0]]:g}, not 0 or 1")
    n = len(rows)
    n_test = HIGGS_TEST if n > 5 * HIGGS_TEST else max(1, n // 5)
    if n - n_test < 2:
        _fail(path, f"{n} rows are too few to split into training and test sets")
    x = rows[:, 1:]
    mean, std = x[:-n_test].mean(0), x[:-n_test].std(0) + 1e-8
    x = ((x - mean) / std).astype(np.float32)
    y = y.astype(np.int64)
    return x[:-n_test], y[:-n_test], x[-n_test:], y[-n_test:]


# text --------------------------------------------------------------------------------------
def read_text(path: str, seq_len: int):
    """Character-level next-character prediction: the vocabulary is the file's characters
    (sorted), the file cut into sequences of ``seq_len`` ids, each sequence's target the same
    window shifted one character on. Returns (x [n, T] int32, y [n, T] int64, vocabulary)."""
    raw = _read_all(path)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        _fail(path, f"not UTF-8 text (byte {e.start}: {raw[e.start:e.start + 1].hex()})")
    if seq_len < 1:
        _fail(path, f"the sequence length must be at least 1, not {seq_len}")
    n = (len(text) - 1) // seq_len
    if n < 2:
        _fail(path, f"{len(text)} characters are too few for two sequences of {seq_len} characters "
                    "and their next characters (use a longer text or a shorter --seq-len)")
    vocab = "".join(sorted(set(text)))
    lookup = {c: i for i, c in enumerate(vocab)}
    ids = np.fromiter((lookup[c] for c in text), np.int32, len(text))
    x = ids[: n * seq_len].reshape(n, seq_len)
    y = ids[1 : n * seq_len + 1].reshape(n, seq_len).astype(np.int64)
    return x, y, vocab
