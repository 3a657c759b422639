"""The newest-frame hand-off: a slow consumer sees the newest frame, drops are counted, and
nothing queues up behind it."""
from __future__ import annotations

import threading

from evit_perception.frame_slot import FrameSlot


def test_newest_frame_wins_and_overwritten_frames_are_counted():
    slot: FrameSlot[int] = FrameSlot()
    assert slot.put(1) is False
    assert slot.put(2) is True
    assert slot.put(3) is True
    assert slot.take(timeout=0) == 3
    assert slot.take(timeout=0) is None  # no backlog behind the newest frame
    assert (slot.received, slot.dropped) == (3, 2)


def test_a_slow_worker_never_builds_a_backlog():
    slot: FrameSlot[int] = FrameSlot()
    taken = []
    step = threading.Event()
    done = threading.Event()

    def worker():
        while True:
            step.wait()
            step.clear()
            item = slot.take(timeout=5)
            if item is None:
                break
            taken.append(item)
            done.set()

    thread = threading.Thread(target=worker)
    thread.start()
    # the producer publishes five frames for every one the worker can take
    for burst in range(4):
        for i in range(5):
            slot.put(burst * 5 + i)
        done.clear()
        step.set()
        assert done.wait(5)
    slot.close()
    step.set()
    thread.join(5)
    assert taken == [4, 9, 14, 19]
    assert slot.dropped == 16 and slot.received == 20


def test_close_wakes_a_waiting_worker():
    slot: FrameSlot[int] = FrameSlot()
    result = []
    thread = threading.Thread(target=lambda: result.append(slot.take(timeout=30)))
    thread.start()
    slot.close()
    thread.join(5)
    assert not thread.is_alive() and result == [None] and slot.closed
