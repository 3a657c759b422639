"""Camera QoS: subscribe so that the camera's publishers can actually reach us.

Facts this module is built on (Fast DDS, measured; see docs/node.md):

* a *reliable* subscription never connects to a *best-effort* publisher (incompatible QoS,
  silently no data); a best-effort subscription accepts both;
* between a reliable publisher and a reliable subscription camera-sized frames arrive
  without extra configuration, whereas best effort loses them unless the publisher has a
  large shared-memory segment (config/fastdds_large_frames.xml).

So ``auto`` subscribes reliably when every publisher on the topic is reliable, and best
effort otherwise (or while nobody publishes yet); the node re-checks as publishers come
and go.
"""
from __future__ import annotations

from typing import Any, List, Optional, Sequence

from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy)

RELIABILITY_MODES = ("auto", "reliable", "best_effort")


def camera_qos(reliability: str = "best_effort", depth: int = 1) -> QoSProfile:
    """The subscription profile for camera frames: keep-last ``depth``, volatile.

    ``reliability`` is ``"reliable"`` or ``"best_effort"`` (resolve ``"auto"`` first with
    :func:`choose_reliability`).
    """
    if reliability not in ("reliable", "best_effort"):
        raise ValueError(f"reliability must be 'reliable' or 'best_effort', not {reliability!r}")
    if depth < 1:
        raise ValueError(f"QoS depth must be >= 1, not {depth}")
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=int(depth),
        reliability=(ReliabilityPolicy.RELIABLE if reliability == "reliable"
                     else ReliabilityPolicy.BEST_EFFORT),
        # Volatile accepts volatile and transient-local publishers alike.
        durability=DurabilityPolicy.VOLATILE,
    )


def reliability_for_publishers(publisher_profiles: Sequence[QoSProfile]) -> str:
    """``"reliable"`` if there are publishers and all are reliable, else ``"best_effort"``."""
    if publisher_profiles and all(p.reliability == ReliabilityPolicy.RELIABLE
                                  for p in publisher_profiles):
        return "reliable"
    return "best_effort"


def publisher_profiles(node: Any, topic: str) -> List[QoSProfile]:
    """QoS profiles of the publishers the graph knows on ``topic`` (fully qualified name)."""
    return [info.qos_profile for info in node.get_publishers_info_by_topic(topic)]


def choose_reliability(node: Any, topic: str, mode: str = "auto") -> str:
    """Resolve a reliability mode for ``topic``: explicit modes pass through, ``auto`` looks
    at the topic's publishers (see module docstring)."""
    if mode not in RELIABILITY_MODES:
        raise ValueError(f"reliability mode must be one of {RELIABILITY_MODES}, not {mode!r}")
    if mode != "auto":
        return mode
    return reliability_for_publishers(publisher_profiles(node, topic))


def describe_qos(profile: QoSProfile) -> str:
    """Short human text of the policies that decide whether two endpoints connect.

    Depth is left out where it is 0: discovery does not carry a remote endpoint's depth.
    """
    text = "reliability={}, durability={}".format(
        _policy_name(profile.reliability), _policy_name(profile.durability))
    return text + (f", depth={profile.depth}" if profile.depth else "")


def incompatibility_reason(publisher: QoSProfile, subscription: QoSProfile) -> Optional[str]:
    """Why ``publisher`` cannot deliver to ``subscription``, or None if they are compatible."""
    try:
        from rclpy.qos import QoSCompatibility, qos_check_compatible
    except ImportError:  # rclpy before Galactic: decide on the two common policies ourselves
        return _manual_incompatibility(publisher, subscription)
    compatibility, reason = qos_check_compatible(publisher, subscription)
    if compatibility == QoSCompatibility.ERROR:
        # rclpy's text reads "ERROR: Best effort publisher and reliable subscription;"
        return reason.replace("ERROR:", "").strip().rstrip(";").strip() or "incompatible QoS"
    return None


def _manual_incompatibility(publisher: QoSProfile, subscription: QoSProfile) -> Optional[str]:
    if (subscription.reliability == ReliabilityPolicy.RELIABLE
            and publisher.reliability == ReliabilityPolicy.BEST_EFFORT):
        return "Best effort publisher and reliable subscription"
    if (subscription.durability == DurabilityPolicy.TRANSIENT_LOCAL
            and publisher.durability == DurabilityPolicy.VOLATILE):
        return "Volatile publisher and transient local subscription"
    return None


def _policy_name(policy: Any) -> str:
    name = getattr(policy, "name", str(policy))
    return name.lower()
