"""The dataset readers on files the tests write in each format, well-formed and malformed;
the validation split; the any-size batches of the driver."""
import gzip
import os
import pickle
import struct

import numpy as np
import pytest

from feascomp import data
from feascomp.errors import FeascompError


def _idx(path, array, code=0x08, gz=False, magic=None, cut=0):
    header = magic if magic is not None else bytes([0, 0, code, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    raw = raw[: len(raw) - cut] if cut else raw
    (gzip.open if gz else open)(path, "wb").write(raw)


def _idx_folder(tmp_path, n_train=50, n_test=20, gz=True, **broken):
    rng = np.random.default_rng(0)
    ext = ".gz" if gz else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        _idx(tmp_path / f"{prefix}-images-idx3-ubyte{ext}", rng.integers(0, 256, (n, 28, 28)), gz=gz,
             **broken.get(f"{prefix}-images", {}))
        labels = broken.get(f"{prefix}-label-values", rng.integers(0, 10, n))
        _idx(tmp_path / f"{prefix}-labels-idx1-ubyte{ext}", np.asarray(labels), gz=gz, **broken.get(f"{prefix}-labels", {}))
    return str(tmp_path)


@pytest.mark.parametrize("gz", [True, False])
def test_idx_reader_gz_and_plain(tmp_path, gz):
    folder = _idx_folder(tmp_path, gz=gz)
    ds = data.load("fashion-mnist", folder)
    assert ds.x_train.shape == (45, 784) and ds.x_val.shape == (5, 784) and ds.x_test.shape == (20, 784)
    assert ds.x_train.dtype == np.float32 and 0 <= ds.x_train.min() and ds.x_train.max() <= 1
    assert ds.y_train.dtype == np.int64 and ds.num_classes == 10
    assert data.load("mnist", folder).name == "mnist"  # the same reader serves real MNIST files


@pytest.mark.parametrize("broken,message", [
    ({"train-images": {"magic": b"\x00\x00\x09\x99"}}, "an IDX file of 153 dimensions"),
    ({"train-images": {"magic": b"PK\x03\x04"}}, "not an IDX file (magic number 504b0304"),
    ({"train-labels": {"magic": b"\x00\x00\x08\x03" + struct.pack(">III", 50, 28, 28)}}, "expected labels"),
    ({"train-images": {"cut": 100}}, "truncated or padded"),
    ({"train-label-values": np.arange(49) % 10}, "49 labels for the 50 images"),
    ({"t10k-label-values": np.r_[np.arange(19) % 10, 12]}, "label 12 of sample 19 is out of range"),
])
def test_idx_reader_refuses_malformed_files(tmp_path, broken, message):
    folder = _idx_folder(tmp_path, **broken)
    with pytest.raises(FeascompError) as e:
        data.load("fashion-mnist", folder)
    assert message in e.value.message and str(tmp_path) in str(e.value.loc)


def test_idx_missing_files_and_folders_name_what_to_do(tmp_path):
    with pytest.raises(FeascompError) as e:
        data.load("fashion-mnist", str(tmp_path / "nowhere"))
    assert "dataset-fashion-mnist" in e.value.message
    with pytest.raises(FeascompError) as e:
        data.load("fashion-mnist", str(tmp_path))
    assert "no train-images-idx3-ubyte.gz or train-images-idx3-ubyte" in e.value.message
    with pytest.raises(FeascompError, match="--data DIR"):
        data.load("mnist")
    _idx_folder(tmp_path)
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8bnot really gzip")
    with pytest.raises(FeascompError, match="damaged compressed file"):
        data.load("mnist", str(tmp_path))


def _cifar_folder(tmp_path, batches=2, n=30, data_override=None, labels_override=None, payload=None):
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, batches + 1)] + ["test_batch"]:
        d = {b"batch_label": name.encode(), b"data": rng.integers(0, 256, (n, 3072)).astype(np.uint8),
             b"labels": list(rng.integers(0, 10, n).tolist()), b"filenames": [b"x.png"] * n}
        if name == "data_batch_1":
            if data_override is not None:
                d[b"data"] = data_override
            if labels_override is not None:
                d[b"labels"] = labels_override
        with open(tmp_path / name, "wb") as fh:
            fh.write(payload if (payload is not None and name == "data_batch_1") else pickle.dumps(d, protocol=2))
    return str(tmp_path)


def test_cifar10_reader(tmp_path):
    ds = data.load("cifar10", _cifar_folder(tmp_path), validation=0)
    assert ds.x_train.shape == (60, 3072) and ds.x_test.shape == (30, 3072) and ds.x_val is None
    hwc = ds.x_train.reshape(-1, 32, 32, 3)
    assert np.allclose(hwc.mean(axis=(0, 1, 2)), 0, atol=1e-5) and np.allclose(hwc.std(axis=(0, 1, 2)), 1, atol=1e-3)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize("kwargs,message", [
    ({"data_override": np.zeros((30, 100), np.uint8)}, "CIFAR-10 rows are 3072 uint8 values"),
    ({"labels_override": [10] * 30}, "label 10 of sample 0 is out of range"),
    ({"labels_override": [1] * 29}, "29 labels for 30 images"),
    ({"payload": pickle.dumps({b"data": _Evil()})}, "refusing to load"),
    ({"payload": b"\x80\x02}q\x00(X"}, "not a CIFAR-10 python batch"),
])
def test_cifar10_reader_refuses_malformed_batches(tmp_path, kwargs, message):
    folder = _cifar_folder(tmp_path, **kwargs)
    with pytest.raises(FeascompError) as e:
        data.load("cifar10", folder)
    assert message in e.value.message and "data_batch_1" in str(e.value.loc)


def _higgs(path, rows, gz=False):
    text = "\n".join(",".join(f"{v:.6e}" for v in r) for r in rows) + "\n"
    (gzip.open(path, "wt") if gz else open(path, "w")).write(text)
    return str(path)


@pytest.mark.parametrize("gz", [False, True])
def test_higgs_reader(tmp_path, gz):
    rng = np.random.default_rng(0)
    rows = np.c_[rng.integers(0, 2, 100), rng.normal(3, 2, (100, 28))]
    ds = data.load("higgs", _higgs(tmp_path / ("h.csv.gz" if gz else "h.csv"), rows, gz))
    assert ds.num_classes == 2 and ds.x_train.shape == (72, 28) and ds.x_val.shape == (8, 28) and ds.x_test.shape == (20, 28)
    assert np.array_equal(ds.y_test, rows[-20:, 0].astype(int))  # the last rows are the test set
    assert data.load("higgs", str(tmp_path / ("h.csv.gz" if gz else "h.csv")), limit=50).x_test.shape == (10, 28)


@pytest.mark.parametrize("edit,message", [
    (lambda r: r.__setitem__((7, 3), np.nan), "row 8, column 4 is not a finite number"),
    (lambda r: r.__setitem__((4, 0), 2), "row 5: the label (first column) is 2, not 0 or 1"),
])
def test_higgs_reader_refuses_malformed_rows(tmp_path, edit, message):
    rows = np.c_[np.zeros(20), np.ones((20, 28))]
    edit(rows)
    with pytest.raises(FeascompError) as e:
        data.load("higgs", _higgs(tmp_path / "h.csv", rows))
    assert message in e.value.message and "h.csv" in str(e.value.loc)


def test_higgs_reader_refuses_text_and_missing_files(tmp_path):
    (tmp_path / "h.csv").write_text("label,f1\n1,2\n")
    with pytest.raises(FeascompError, match="not a HIGGS csv"):
        data.load("higgs", str(tmp_path / "h.csv"))
    with pytest.raises(FeascompError, match="no such file"):
        data.load("higgs", str(tmp_path / "missing.csv"))
    with pytest.raises(FeascompError, match="--data PATH"):
        data.load("higgs")


def test_text_reader(tmp_path):
    text = "to be, or not to be: that is the question. " * 20
    (tmp_path / "t.txt").write_text(text)
    ds = data.load("text", str(tmp_path / "t.txt"), seq_len=16, validation=0)
    assert ds.vocabulary == "".join(sorted(set(text))) and ds.num_classes == len(ds.vocabulary)
    n = (len(text) - 1) // 16
    assert len(ds.x_train) + len(ds.x_test) == n and ds.x_train.shape[1] == 16
    ids = np.concatenate([ds.x_train, ds.x_test])
    targets = np.concatenate([ds.y_train, ds.y_test])
    decoded = "".join(ds.vocabulary[i] for i in ids.ravel())
    assert decoded == text[: n * 16]
    assert np.array_equal(targets[:, :-1], ids[:, 1:])  # shifted by one character
    assert ds.vocabulary[targets[-1, -1]] == text[n * 16]


@pytest.mark.parametrize("content,message", [
    ("short", "too few for two sequences"),
    (b"\xff\xfe not utf-8", "not UTF-8 text"),
])
def test_text_reader_refuses(tmp_path, content, message):
    path = tmp_path / "t.txt"
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    with pytest.raises(FeascompError) as e:
        data.load("text", str(path), seq_len=8)
    assert message in e.value.message and "t.txt" in str(e.value.loc)


def test_validation_split_is_fixed_and_disjoint():
    a, b = data.load("digits"), data.load("digits")
    assert np.array_equal(a.x_val, b.x_val) and a.x_train.shape == (1260, 64) and a.x_val.shape == (140, 64)
    whole = data.load("digits", validation=0)
    assert whole.x_val is None and whole.evaluation[0] == "test"
    rows = {r.tobytes() for r in whole.x_train}
    assert {r.tobytes() for r in a.x_val} <= rows and len(a.x_train) + len(a.x_val) == len(whole.x_train)
    with pytest.raises(FeascompError, match="cannot hold out"):
        whole.hold_out(0.9999)


def test_batches_resume_at_any_position():
    full = list(zip(range(40), data.batches(100, 16, 7)))
    for start in (0, 5, 6, 13):
        again = data.batches(100, 16, 7, start=start)
        assert all(np.array_equal(next(again), full[start + i][1]) for i in range(10))
