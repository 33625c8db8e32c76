"""Run by Python at the start of a test's subprocess whose PYTHONPATH begins with this folder
(``local_only.subprocess_env``): the loopback-only socket guard of tests/local_only.py, installed before
the child's own code runs, whatever that code is (``-c``, ``-m se_hub_cli``). local_only is loaded from
its file, so the child's import path gains nothing else (a plain-timm child still cannot import se_hub)."""
import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location('local_only', Path(__file__).resolve().parents[1] / 'local_only.py')
_local_only = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_local_only)
_local_only.install()
