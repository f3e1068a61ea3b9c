"""mkdocs hook: give mkdocstrings the package as installed, ``plugins/`` as ``pulse.plugins``.

pyproject maps ``plugins/`` to ``pulse.plugins`` (setuptools package-dir). mkdocstrings reads
sources from directories, so before the build this hook lays out ``build/api-src/pulse``: a
symlink to every entry of ``pulse/`` plus ``plugins`` -> ``plugins/``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TREE = ROOT / "build" / "api-src"


def on_startup(command: str, dirty: bool) -> None:
    """Lay out the tree before any plugin starts: mkdocstrings resolves its ``paths`` when it
    starts, and a path that does not exist yet is dropped (a fresh checkout's first build
    then looked for ``pulse.plugins`` in the installed package and failed)."""
    lay_out()


def on_config(config: Any) -> Any:
    """Rebuild the link tree (cheap: symlinks only) and leave the config as it is."""
    lay_out()
    return config


def lay_out() -> None:
    """``build/api-src/pulse``: a symlink to every entry of ``pulse/`` plus ``plugins``."""
    package = TREE / "pulse"
    if TREE.exists():
        shutil.rmtree(TREE)
    package.mkdir(parents=True)
    for entry in (ROOT / "pulse").iterdir():
        if entry.name != "__pycache__":
            (package / entry.name).symlink_to(entry)
    (package / "plugins").symlink_to(ROOT / "plugins")
