"""The one exception type of the data package."""

from __future__ import annotations

__all__ = ["DataError"]


class DataError(ValueError):
    """A dataset cannot be built or read: bad path, bad list file, no readable image.

    Raised at construction wherever possible, so that a broken dataset stops a run
    before any training step, with a message that names the offending file or key.
    """
