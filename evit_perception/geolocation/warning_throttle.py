"""Warn once per cause per period, and count every occurrence (for diagnostics).

A node fed bad input at 30 Hz must say so, but not 30 times a second: the first occurrence of
a cause is logged at once, later ones are counted and folded into the next log line for that
cause once ``period_s`` has passed.
"""
from __future__ import annotations

import time
from collections import Counter
from typing import Callable, Dict


class ThrottledWarnings:
    """``warn(cause, text)`` logs through ``log`` at most once per ``period_s`` per cause."""

    def __init__(self, log: Callable[[str], None], period_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._log = log
        self._period = float(period_s)
        self._clock = clock
        self._last_logged: Dict[str, float] = {}
        self._suppressed: Counter = Counter()
        #: Every occurrence per cause since start (never reset; diagnostics publish these).
        self.totals: Counter = Counter()

    def warn(self, cause: str, text: str) -> bool:
        """Count ``cause``; log ``text`` when the cause was not logged within the period.
        Returns whether a line was logged."""
        self.totals[cause] += 1
        now = self._clock()
        last = self._last_logged.get(cause)
        if last is not None and now - last < self._period:
            self._suppressed[cause] += 1
            return False
        skipped = self._suppressed.pop(cause, 0)
        suffix = " (%d more since the last warning)" % skipped if skipped else ""
        self._log("[%s] %s%s" % (cause, text, suffix))
        self._last_logged[cause] = now
        return True
