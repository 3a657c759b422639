"""Matching messages by header stamp: a bounded, stamp-sorted buffer with tolerance lookups.

Messages may arrive out of order (several DDS writers, a bag replayed, a slow executor), so
samples are kept sorted by stamp rather than by arrival. A lookup returns the sample nearest
the requested stamp when it lies within the tolerance, or interpolates between the two
samples around it when both are within the tolerance. There is never a guess: outside the
tolerance the answer is ``None``.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Callable, Generic, List, Optional, TypeVar

from .frames import RigidTransform, quaternion_slerp

T = TypeVar("T")


def stamp_to_ns(stamp) -> int:
    """builtin_interfaces/Time (``sec``, ``nanosec``) -> integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


@dataclass(frozen=True)
class Match(Generic[T]):
    """A lookup's answer: the value, how far its stamp is from the requested one (ns, sample
    minus request; 0 when interpolated) and whether it was interpolated."""

    value: T
    offset_ns: int
    interpolated: bool


class StampedBuffer(Generic[T]):
    """At most ``capacity`` samples sorted by stamp; the oldest stamps are dropped first.

    ``interpolate(a, b, fraction)`` blends two samples; without it lookups pick the nearest.
    """

    def __init__(self, capacity: int = 200,
                 interpolate: Optional[Callable[[T, T, float], T]] = None) -> None:
        if capacity < 1:
            raise ValueError("buffer capacity must be at least 1, got %d" % capacity)
        self._capacity = int(capacity)
        self._interpolate = interpolate
        self._stamps: List[int] = []
        self._values: List[T] = []

    def __len__(self) -> int:
        return len(self._stamps)

    @property
    def newest_stamp(self) -> Optional[int]:
        """Largest stamp held (ns), or None when empty."""
        return self._stamps[-1] if self._stamps else None

    def add(self, stamp_ns: int, value: T) -> None:
        """Insert a sample at its place by stamp; a sample with an equal stamp is replaced."""
        i = bisect.bisect_left(self._stamps, stamp_ns)
        if i < len(self._stamps) and self._stamps[i] == stamp_ns:
            self._values[i] = value
            return
        self._stamps.insert(i, stamp_ns)
        self._values.insert(i, value)
        if len(self._stamps) > self._capacity:
            del self._stamps[0]
            del self._values[0]

    def clear(self) -> None:
        """Forget every sample (e.g. when the clock jumps back in a replayed bag)."""
        self._stamps.clear()
        self._values.clear()

    def nearest_offset(self, stamp_ns: int) -> Optional[int]:
        """Signed distance (ns) from ``stamp_ns`` to the nearest sample, None when empty."""
        if not self._stamps:
            return None
        i = bisect.bisect_left(self._stamps, stamp_ns)
        candidates = [self._stamps[j] - stamp_ns for j in (i - 1, i) if 0 <= j < len(self._stamps)]
        return min(candidates, key=abs)

    def lookup(self, stamp_ns: int, tolerance_ns: int) -> Optional[Match[T]]:
        """The sample for ``stamp_ns``: interpolated between its neighbours when both lie within
        ``tolerance_ns`` (and an interpolator was given), else the nearest within the tolerance,
        else None."""
        if not self._stamps:
            return None
        i = bisect.bisect_left(self._stamps, stamp_ns)
        if i < len(self._stamps) and self._stamps[i] == stamp_ns:
            return Match(self._values[i], 0, False)
        before, after = i - 1, i
        if (self._interpolate is not None and before >= 0 and after < len(self._stamps)
                and stamp_ns - self._stamps[before] <= tolerance_ns
                and self._stamps[after] - stamp_ns <= tolerance_ns):
            t0, t1 = self._stamps[before], self._stamps[after]
            value = self._interpolate(self._values[before], self._values[after], (stamp_ns - t0) / (t1 - t0))
            return Match(value, 0, True)
        best = None
        for j in (before, after):
            if 0 <= j < len(self._stamps):
                offset = self._stamps[j] - stamp_ns
                if abs(offset) <= tolerance_ns and (best is None or abs(offset) < abs(best[1])):
                    best = (j, offset)
        return None if best is None else Match(self._values[best[0]], best[1], False)


def interpolate_transforms(a: RigidTransform, b: RigidTransform, fraction: float) -> RigidTransform:
    """Pose between two poses: linear in position, spherical (slerp) in orientation."""
    translation = (1.0 - fraction) * a.translation + fraction * b.translation
    q = quaternion_slerp(a.quaternion(), b.quaternion(), fraction)
    return RigidTransform.from_pose(translation, q)


class PoseBuffer(StampedBuffer[RigidTransform]):
    """Drone poses (``T_world_base``) by stamp, interpolated between neighbours when asked."""

    def __init__(self, capacity: int = 200, interpolate: bool = True) -> None:
        super().__init__(capacity, interpolate_transforms if interpolate else None)

