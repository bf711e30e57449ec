"""duckdb without its package-metadata lookup, for every start.

duckdb 1.5.5's ``duckdb/_version.py`` reads the package's own version with
``importlib.metadata``, whose import (email, zipfile, csv, ...) costs ≈ 20 ms of every
start: 4 % of a one-shot ``glance chat`` (bench/startup.py), which sits at its 1.3× limit.
The engine it bundles states the same version (1.5.5 for both; a test checks them
against each other), so duckdb is given that module instead, before it is imported.
Nothing else changes: ``duckdb.__version__`` and ``duckdb.version()`` answer as before.
"""
import sys
import types


def without_package_metadata() -> None:
    if "duckdb" in sys.modules or "duckdb._version" in sys.modules:
        return                          # imported already (or another way): leave it be
    import _duckdb
    bundled = _duckdb.__version__
    module = types.ModuleType("duckdb._version")
    module.__version__ = module.__duckdb_version__ = bundled
    module.version = lambda: f"{bundled} (with duckdb {bundled})"
    sys.modules["duckdb._version"] = module
