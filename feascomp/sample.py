"""``feascomp sample``: text from a trained character model (examples/shakespeare_rnn.fc).

The model reads a window of T token ids and gives next-character logits at every position
(its output is [T, classes]). Generation keeps the last T characters of the prompt and what
was generated so far; when fewer than T are known they fill the window's first positions
(the rest is padding, never read: position t's logits depend on positions <= t in a causal
model, as a ``for`` block with carries is). Each next character is drawn from the softmax of
the logits at the last known position divided by ``temperature`` (seeded), or is their
argmax (``greedy``). The vocabulary comes from the parameter file (``train --save`` stores
the text dataset's), so no data file is needed.
"""
from __future__ import annotations

import numpy as np

from .errors import FeascompError, Loc


def load_vocabulary(path: str) -> str:
    """The vocabulary ``train --save`` wrote beside a text model's parameters."""
    with np.load(path, allow_pickle=False) as z:
        if "meta:vocabulary" not in z.files:
            raise FeascompError("the parameter file holds no vocabulary (it was not trained on the text dataset, or "
                                "was saved by an older feascomp); sampling needs the characters the ids stand for",
                                Loc(path))
        return str(z["meta:vocabulary"])


def sample(solver, params: dict, vocabulary: str, prompt: str, length: int, *, temperature: float = 1.0,
           greedy: bool = False, seed: int = 0) -> str:
    """``length`` characters generated after ``prompt`` by a compiled character model."""
    (window,) = solver.input_shape
    ids = {c: i for i, c in enumerate(vocabulary)}
    unknown = sorted({c for c in prompt if c not in ids})
    if unknown:
        raise FeascompError(f"the prompt holds characters outside the model's vocabulary: {''.join(unknown)!r}")
    if not prompt:
        raise FeascompError("the prompt is empty; give at least one character (--prompt)")
    rng = np.random.default_rng(seed)
    known = [ids[c] for c in prompt]
    out = []
    for _ in range(length):
        context = known[-window:]
        x = np.zeros((1, window), np.int32)
        x[0, : len(context)] = context
        logits = np.asarray(solver.apply(params, x), np.float64)[0, len(context) - 1]
        if greedy:
            nxt = int(np.argmax(logits))
        else:
            z = logits / temperature
            p = np.exp(z - z.max())
            nxt = int(rng.choice(len(p), p=p / p.sum()))
        known.append(nxt)
        out.append(vocabulary[nxt])
    return "".join(out)
