"""Optional installs: a config that needs a package outside the core install says which extra
brings it (`pip install "ecoflap_exp[captions]"`), before any model loads."""

from __future__ import annotations

import importlib
import importlib.util

from ecoflap_exp.errors import UserError


def require(module: str, extra: str, needed_by: str) -> None:
    """UserError naming the extra when `module` is not installed."""
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken install, or one masked in sys.modules
        found = False
    if not found:
        raise UserError(f"{needed_by} needs {module}, which is not installed; pip install \"ecoflap_exp[{extra}]\" "
                        f"(in a clone: pip install -e \".[{extra}]\")")


def require_import(module: str, extra: str, needed_by: str) -> None:
    """`require` for the module's package, then import the module itself (a package can be installed
    but break on import, e.g. a dependency of another version): UserError naming the extra to reinstall."""
    package = module.split(".")[0]
    require(package, extra, needed_by)
    try:
        importlib.import_module(module)
    except ImportError as err:
        raise UserError(f"{needed_by}: {package} does not import ({err}); reinstall it with "
                        f"pip install \"ecoflap_exp[{extra}]\"") from err
