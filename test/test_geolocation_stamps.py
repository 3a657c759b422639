"""Stamp matching: out-of-order arrival, tolerance, bounded size, pose interpolation."""
import math

import numpy as np
import pytest

from evit_perception.geolocation.frames import RigidTransform, rpy_to_matrix
from evit_perception.geolocation.stamp_matching import PoseBuffer, StampedBuffer, stamp_to_ns

MS = 1_000_000


def test_out_of_order_arrival_finds_the_nearest_sample():
    buffer = StampedBuffer(capacity=10)
    for stamp in (50, 10, 40, 20, 30):  # shuffled arrival
        buffer.add(stamp * MS, "pose@%d" % stamp)
    assert buffer.newest_stamp == 50 * MS
    assert buffer.lookup(31 * MS, 5 * MS).value == "pose@30"
    assert buffer.lookup(36 * MS, 5 * MS).value == "pose@40"
    match = buffer.lookup(12 * MS, 5 * MS)
    assert (match.value, match.offset_ns, match.interpolated) == ("pose@10", -2 * MS, False)
    assert buffer.lookup(40 * MS, 0).value == "pose@40"


def test_no_match_outside_tolerance():
    buffer = StampedBuffer(capacity=10)
    assert buffer.lookup(0, MS) is None and buffer.nearest_offset(0) is None
    buffer.add(100 * MS, "a")
    buffer.add(200 * MS, "b")
    assert buffer.lookup(150 * MS, 40 * MS) is None  # between samples, both too far
    assert buffer.lookup(260 * MS, 50 * MS) is None  # newer than everything
    assert buffer.nearest_offset(260 * MS) == -60 * MS
    assert buffer.nearest_offset(90 * MS) == 10 * MS


def test_capacity_drops_oldest_stamps_not_oldest_arrivals():
    buffer = StampedBuffer(capacity=3)
    for stamp in (30, 40, 10, 20):
        buffer.add(stamp * MS, stamp)
    assert len(buffer) == 3
    assert buffer.lookup(10 * MS, MS) is None  # the oldest stamp was dropped
    assert buffer.lookup(20 * MS, MS).value == 20
    buffer.add(20 * MS, 21)  # same stamp replaces
    assert len(buffer) == 3 and buffer.lookup(20 * MS, 0).value == 21
    with pytest.raises(ValueError, match="capacity"):
        StampedBuffer(capacity=0)


def test_pose_interpolation_between_neighbours():
    poses = PoseBuffer(capacity=10, interpolate=True)
    poses.add(100 * MS, RigidTransform(np.eye(3), np.array([0.0, 0.0, 10.0])))
    poses.add(140 * MS, RigidTransform(rpy_to_matrix(0, 0, math.pi / 2), np.array([4.0, 0.0, 12.0])))
    match = poses.lookup(110 * MS, 30 * MS)
    assert match.interpolated and match.offset_ns == 0
    assert np.allclose(match.value.translation, [1.0, 0.0, 10.5])
    assert np.allclose(match.value.rotation, rpy_to_matrix(0, 0, math.pi / 8))
    # one neighbour outside the tolerance: nearest, not interpolated
    nearest = poses.lookup(110 * MS, 20 * MS)
    assert not nearest.interpolated and np.allclose(nearest.value.translation, [0.0, 0.0, 10.0])
    plain = PoseBuffer(capacity=10, interpolate=False)
    plain.add(100 * MS, RigidTransform())
    plain.add(140 * MS, RigidTransform(np.eye(3), np.ones(3)))
    assert not plain.lookup(125 * MS, 30 * MS).interpolated


def test_stamp_to_ns():
    class Stamp:
        sec, nanosec = 12, 345
    assert stamp_to_ns(Stamp()) == 12_000_000_345
