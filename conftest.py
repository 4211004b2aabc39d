"""Make ``import platform.x`` reach rankhouse's control plane inside pytest.

pytest imports the standard-library ``platform`` before any conftest runs, so the name is
taken. Our package re-exports the standard module's API (see platform/__init__.py), so
swapping it in ``sys.modules`` keeps every library that already imported it working.
"""

import importlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
if not hasattr(sys.modules.get("platform"), "__path__"):
    sys.modules.pop("platform", None)
    sys.path.insert(0, str(ROOT))
    importlib.import_module("platform")
