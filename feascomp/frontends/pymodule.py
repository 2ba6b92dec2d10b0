"""``feascomp train module.py:function``: load a JAX model function and its initialiser
from a Python file, turning every failure into a located error."""
from __future__ import annotations

import importlib.util
import os
import sys

from ..errors import FeascompError, Loc, loc_from_traceback


def load_function(spec: str, init_name: str | None, seed: int):
    """(function, params) for ``path.py:function``; params = init(seed) from the module."""
    path, _, name = spec.rpartition(":")
    if not os.path.isfile(path):
        raise FeascompError("no such file" if not os.path.exists(path) else "not a file", Loc(path))
    modname = "_feascomp_model_" + os.path.splitext(os.path.basename(path))[0]
    try:
        mspec = importlib.util.spec_from_file_location(modname, path)
        module = importlib.util.module_from_spec(mspec)
        sys.modules[modname] = module
        mspec.loader.exec_module(module)
    except (Exception, SystemExit) as e:  # noqa: BLE001 - the user's code (sys.exit included): report it, located
        raise FeascompError(f"cannot load the model module: {type(e).__name__}: {e}", loc_from_traceback(e, path)) from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise FeascompError(f"{path} defines no function {name!r}", Loc(path))
    candidates = [init_name] if init_name else ["init_params", f"{name}_init"]
    init = next((getattr(module, c) for c in candidates if callable(getattr(module, c, None))), None)
    if init is None:
        raise FeascompError(f"no parameter initialiser: define {' or '.join(candidates)}(seed) in the module, or pass --init NAME",
                            Loc(path))
    try:
        params = init(seed)
    except (Exception, SystemExit) as e:  # noqa: BLE001
        raise FeascompError(f"the initialiser failed: {type(e).__name__}: {e}", loc_from_traceback(e, path)) from None
    return fn, params
