"""Batches prepared ahead of the training step, in a background thread on a side CUDA stream.

Used by the training loop for batch transforms that run on the device (the GPU input paths of
:mod:`mae.engine.gpu_input`, the uint8 -> float normalisation of :class:`mae.data.NormalizeBatch`), so
that copying, decoding and normalising batch k+1 overlaps the step of batch k.
"""
from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from typing import Any

import torch


class _End:
    pass


class _Failed:
    def __init__(self, exc: BaseException):
        self.exc = exc


def _tensors(obj: Any) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from _tensors(o)


class PrefetchLoader:
    """Yields ``transform(batch)`` for each batch of ``loader``, prepared ``depth`` batches ahead.

    With ``background=True`` a thread runs ``transform`` (on its own CUDA stream when ``device`` is
    CUDA); the consumer's stream waits on an event per batch, and the tensors are recorded on it so the
    caching allocator never hands their memory out early. Errors in the thread re-raise in the consumer.
    """

    def __init__(self, loader: Iterable, transform: Callable[[Any], Any], device: torch.device | str,
                 depth: int = 2, background: bool = True):
        if depth < 1:
            raise ValueError(f"prefetch depth must be >= 1, got {depth}")
        self.loader, self.transform = loader, transform
        self.device = torch.device(device)
        self.depth, self.background = depth, background
        self._stream: torch.cuda.Stream | None = None  # one side stream for every pass (its cached blocks are reused)

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[Any]:
        if not self.background:
            for batch in self.loader:
                yield self.transform(batch)
            return
        cuda = self.device.type == "cuda"
        if cuda and self._stream is None:
            self._stream = torch.cuda.Stream(self.device)
        stream = self._stream
        q: queue.Queue = queue.Queue(maxsize=self.depth)
        stop = threading.Event()

        def put(item: Any) -> bool:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def work() -> None:
            try:
                with (torch.cuda.device(self.device) if cuda else nullcontext()), \
                        (torch.cuda.stream(stream) if cuda else nullcontext()):
                    for batch in self.loader:
                        out = self.transform(batch)
                        event = None
                        if cuda:
                            event = torch.cuda.Event()
                            event.record(stream)
                        if not put((out, event)):
                            return
                put(_End())
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer
                put(_Failed(exc))

        thread = threading.Thread(target=work, name="mae-prefetch", daemon=True)
        thread.start()
        try:
            while True:
                item = q.get()
                if isinstance(item, _End):
                    return
                if isinstance(item, _Failed):
                    raise item.exc
                out, event = item
                if event is not None:
                    current = torch.cuda.current_stream(self.device)
                    current.wait_event(event)
                    for t in _tensors(out):
                        t.record_stream(current)
                yield out
        finally:
            stop.set()
            while thread.is_alive():
                try:
                    q.get(timeout=0.05)
                except queue.Empty:
                    pass
            thread.join()


