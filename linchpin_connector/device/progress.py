"""A progress bar on stderr for ``lmdevice request`` when a body is large."""

from __future__ import annotations

MIB = 1024 * 1024
THRESHOLD = 4 * MIB  # smaller bodies arrive too fast for a bar to help


class Progress:
    """Redraws one terminal line as body bytes arrive.

    With a known size over :data:`THRESHOLD`: a bar and a percentage, redrawn
    when the percentage changes.  With no size: a byte count, once past the
    threshold, redrawn every MiB.  Small bodies draw nothing.
    """

    WIDTH = 30

    def __init__(self, out, total: int | None):
        self.out = out
        self.total = total if total is not None and total >= 0 else None
        self.done = 0
        self._shown = None
        self.drawn = False

    def update(self, n: int) -> None:
        self.done += n
        if self.total is not None:
            if self.total < THRESHOLD:
                return
            mark = min(100, self.done * 100 // self.total) if self.total else 100
        else:
            if self.done < THRESHOLD:
                return
            mark = self.done // MIB
        if mark != self._shown:
            self._shown = mark
            self._draw()

    def _draw(self) -> None:
        got = f"{self.done / MIB:.1f} MiB"
        if self.total is not None:
            filled = self.WIDTH * self._shown // 100
            line = f"[{'#' * filled}{'.' * (self.WIDTH - filled)}] {self._shown:3d}% {got} of {self.total / MIB:.1f} MiB"
        else:
            line = f"{got} received"
        self.out.write("\r" + line)
        self.out.flush()
        self.drawn = True

    def finish(self) -> None:
        if self.drawn:
            self.out.write("\n")
            self.out.flush()
