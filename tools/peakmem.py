"""Peak resident memory of a block's child processes (the papermill kernel of a chapter)."""

from __future__ import annotations

import os
import threading
from pathlib import Path


def _descendants(root: int) -> list[int]:
    """Process ids below `root` (Linux /proc; empty elsewhere)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


class PeakMemory:
    """Peak resident memory (MiB) of this process's descendants while the block runs (the
    papermill kernel), from their VmHWM, polled every `interval` seconds; NaN off Linux."""

    def __init__(self, interval: float = 0.5):
        self.interval, self.peak_kib, self._stop = interval, 0, threading.Event()

    def _poll(self) -> None:
        while not self._stop.wait(self.interval):
            for pid in _descendants(os.getpid()):
                try:
                    status = Path(f"/proc/{pid}/status").read_text()
                except OSError:
                    continue
                for line in status.splitlines():
                    if line.startswith("VmHWM:"):
                        self.peak_kib = max(self.peak_kib, int(line.split()[1]))

    def __enter__(self) -> PeakMemory:
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def mib(self) -> float:
        return self.peak_kib / 1024 if self.peak_kib else float("nan")
