"""rankhouse's control plane (driver-side only).

The user's command is ``python -m platform.tune``, so this package carries the name of the
standard-library module ``platform`` that torch, ray, uuid and mlflow import. To keep those
libraries working in the driver, this file loads the standard library's ``platform.py`` and
re-exports everything it defines. Nothing a Ray worker executes may live under this package:
a worker has usually imported the standard ``platform`` already, so ``import platform.x``
would fail there. Workers run code from ``trainables`` only.
"""

import importlib.util as _importlib_util
import os as _os
import sysconfig as _sysconfig

_stdlib_file = _os.path.join(_sysconfig.get_paths()["stdlib"], "platform.py")
_spec = _importlib_util.spec_from_file_location("_stdlib_platform", _stdlib_file)
_stdlib_platform = _importlib_util.module_from_spec(_spec)
_spec.loader.exec_module(_stdlib_platform)
globals().update({k: v for k, v in vars(_stdlib_platform).items() if not k.startswith("__")})
