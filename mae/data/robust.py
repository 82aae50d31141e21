"""Image datasets that survive a few corrupt files (shared by folders and list files).

A long pre-training run (800 epochs of ImageNet, paper Sec. 4) should not die in epoch
300 on one truncated JPEG, nor silently shrink its batches. `RobustImageDataset` holds
(path, label) samples; when a file cannot be decoded it warns once (naming the file),
counts the event in shared memory (so DataLoader workers report to the main process)
and returns the next readable sample instead. If no file at all can be read it raises.
"""

from __future__ import annotations

import struct
import warnings
from typing import Any, Callable, Sequence

import torch
from PIL import Image
from torch.utils.data import Dataset, get_worker_info

from .errors import DataError

__all__ = ["RobustImageDataset", "UnreadableImageWarning", "load_rgb", "UNREADABLE_ERRORS"]

#: What PIL raises on truncated, corrupt, vanished or oversized files.
UNREADABLE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # includes PIL.UnidentifiedImageError, FileNotFoundError, "image file is truncated"
    SyntaxError,  # some PIL plugins report broken headers this way
    ValueError,
    EOFError,
    struct.error,
    Image.DecompressionBombError,
)

# One counter slot per DataLoader worker (slot 0 = the main process), so that each slot
# has a single writer and increments never race between processes.
_SKIP_SLOTS = 257


class UnreadableImageWarning(UserWarning):
    """An image file could not be decoded and was replaced by the next readable one."""


def load_rgb(path: str) -> Image.Image:
    """Open an image with PIL and decode it fully as RGB (raises on unreadable files)."""
    with open(path, "rb") as f:
        img = Image.open(f)
        return img.convert("RGB")  # convert() forces the decode while the file is open


def _worker_slot() -> int:
    info = get_worker_info()
    return 0 if info is None else 1 + info.id % (_SKIP_SLOTS - 1)


class RobustImageDataset(Dataset):
    """(path, label) samples loaded as RGB PIL images; unreadable files are skipped.

    Args:
        samples: list of (file path, integer label).
        transform: applied to the PIL image (None returns the PIL image).
        source: a short description (root folder, list file) used in messages.

    Attributes:
        samples, targets, transform.
        num_skipped: how many times an unreadable file was passed over (all processes).
        bad_files: the paths found unreadable so far (all processes).
    """

    def __init__(
        self,
        samples: Sequence[tuple[str, int]],
        transform: Callable[[Image.Image], Any] | None = None,
        *,
        source: str,
    ) -> None:
        if len(samples) == 0:
            raise DataError(f"{source}: the dataset has no samples")
        self.samples: list[tuple[str, int]] = [(str(p), int(y)) for p, y in samples]
        self.targets: list[int] = [y for _, y in self.samples]
        self.transform = transform
        self.source = source
        # Shared-memory state: seen by every DataLoader worker and by the main process.
        self._bad = torch.zeros(len(self.samples), dtype=torch.bool).share_memory_()
        self._skips = torch.zeros(_SKIP_SLOTS, dtype=torch.int64).share_memory_()

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def num_skipped(self) -> int:
        """Unreadable-file encounters so far, summed over the main process and all workers."""
        return int(self._skips.sum())

    @property
    def bad_files(self) -> list[str]:
        """Paths of the files found unreadable so far (in dataset order)."""
        return [self.samples[i][0] for i in torch.nonzero(self._bad).flatten().tolist()]

    def load(self, path: str) -> Image.Image:
        """Decode one file; subclasses may override (must raise one of UNREADABLE_ERRORS)."""
        return load_rgb(path)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        n = len(self.samples)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} samples ({self.source})")
        index %= n
        for step in range(n):
            i = (index + step) % n
            path, label = self.samples[i]
            if not bool(self._bad[i]):
                try:
                    img = self.load(path)
                except UNREADABLE_ERRORS as exc:  # noqa: PERF203 - the retry is the point
                    self._mark_bad(i, exc)
                else:
                    if self.transform is not None:
                        img = self.transform(img)
                    return img, label
            self._skips[_worker_slot()] += 1
        raise DataError(
            f"{self.source}: none of the {n} image files could be read "
            f"(e.g. {self.samples[index][0]}); check the files and the extension filter"
        )

    def _mark_bad(self, i: int, exc: BaseException) -> None:
        if not bool(self._bad[i]):  # warn once per file across processes (benign race)
            self._bad[i] = True
            warnings.warn(
                f"{self.source}: skipping unreadable image {self.samples[i][0]} "
                f"({type(exc).__name__}: {exc}); using the next readable sample instead",
                UnreadableImageWarning,
                stacklevel=3,
            )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.source!r}, n={len(self)})"
