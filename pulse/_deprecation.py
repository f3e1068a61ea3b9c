"""Old spellings kept for one 0.x release: each use raises a DeprecationWarning at the caller's line.

``docs/api/vocabulary.md`` lists every rename; an old spelling goes away in the release
after the one that deprecated it.
"""

from __future__ import annotations

import warnings
from typing import Any


def deprecated(old: str, new: str, *, stacklevel: int = 3) -> None:
    """Warn that ``old`` is now spelled ``new`` (a :class:`DeprecationWarning` at the caller's
    caller by default)."""
    warnings.warn(f"{old} is deprecated; use {new}", DeprecationWarning, stacklevel=stacklevel)


def renamed(where: str, old: str, new: str, old_value: Any, new_value: Any, *,
            stacklevel: int = 4) -> Any:
    """``new_value``, or ``old_value`` (with a warning) when the caller used the old keyword.

    For a keyword-only parameter kept under its old name with a ``None`` default.
    """
    if old_value is None:
        return new_value
    deprecated(f"{where}({old}=...)", f"{new}=", stacklevel=stacklevel)
    return old_value
