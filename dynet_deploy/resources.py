"""Files the package ships, found through the package itself so that a checkout and an installed wheel agree.

- ``assets/``: the bundled checkpoints (and their training reports);
- ``recipes/``: the bundled deployment recipes (``deploy``, ``demo``, ``build``/``validate --recipe``);
- ``lib/``: the native libraries where a wheel carries them (a checkout builds them into ``build/``; see
  :func:`dynet_deploy.op.native.search_dirs` for the order they are looked for in).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def package_dir(*parts: str) -> Path:
    """A folder inside the installed ``dynet_deploy`` package (a real path: the package is never zipped)."""
    return Path(str(resources.files("dynet_deploy").joinpath(*parts)))


ASSETS_DIR = package_dir("assets")
RECIPES_DIR = package_dir("recipes")
LIBRARY_DIR = package_dir("lib")
