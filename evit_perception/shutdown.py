"""Spin a node until Ctrl-C or an external shutdown, and treat both as a clean exit."""
from __future__ import annotations

import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node

try:
    from rclpy.executors import ExternalShutdownException
except ImportError:  # Foxy
    class ExternalShutdownException(Exception):  # type: ignore[no-redef]
        """Never raised on distributions that lack it."""


def spin_until_shutdown(node: Node) -> None:
    """``rclpy.spin(node)``, returning normally when the context is shut down.

    rclpy's SIGINT handler shuts the context down from the signal; when that lands between
    two executor iterations, the next one fails to build its wait set and raises an
    ``RCLError`` ("the given context is not valid") instead of ``ExternalShutdownException``.
    Seen as exit code 1 on Ctrl-C in our process tests. Any error raised while the context is
    still valid is a real failure and propagates.
    """
    executor = SingleThreadedExecutor(context=node.context)   # the node's context, default or not
    try:
        rclpy.spin(node, executor)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:
        if rclpy.ok(context=node.context):
            raise
    finally:
        executor.shutdown()
