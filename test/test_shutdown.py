"""spin_until_shutdown: a shut-down context is a clean exit, a failure while running is not."""
from __future__ import annotations

import pytest

rclpy = pytest.importorskip("rclpy")

from evit_perception.shutdown import spin_until_shutdown  # noqa: E402


def _node_with_timer(callback):
    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node("evit_shutdown_test", context=context)
    node.create_timer(0.01, lambda: callback(context))
    return context, node


def test_error_after_the_context_shut_down_is_a_clean_exit():
    # What rclpy's SIGINT handler causes when it lands between two executor iterations: the
    # context is gone and the executor fails on it.
    def shut_down_then_fail(context):
        context.shutdown()
        raise RuntimeError("the given context is not valid")

    context, node = _node_with_timer(shut_down_then_fail)
    spin_until_shutdown(node)       # returns, no exception
    assert not context.ok()
    node.destroy_node()


def test_error_while_running_propagates():
    def fail(context):
        raise RuntimeError("a real bug in a callback")

    context, node = _node_with_timer(fail)
    with pytest.raises(RuntimeError, match="real bug"):
        spin_until_shutdown(node)
    node.destroy_node()
    context.try_shutdown()
