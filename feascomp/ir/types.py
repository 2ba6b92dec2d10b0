"""Tensor types: a dtype and a static shape. The IR holds types, never values."""
from __future__ import annotations

import dataclasses
import math

import numpy as np

DTYPES = {"f32": np.float32, "f64": np.float64, "i32": np.int32}


@dataclasses.dataclass(frozen=True)
class TensorType:
    dtype: str
    shape: tuple[int, ...]

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}; use one of {', '.join(DTYPES)}")
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))

    def __str__(self) -> str:
        return f"{self.dtype}[{', '.join(map(str, self.shape))}]"

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def np_dtype(self):
        return np.dtype(DTYPES[self.dtype])

    @property
    def nbytes(self) -> int:
        return self.size * self.np_dtype.itemsize

    def with_shape(self, shape) -> "TensorType":
        return TensorType(self.dtype, tuple(shape))
