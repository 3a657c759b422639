"""Pictures of a bag evaluation: latency histogram and a strip of frames with boxes.

PR curves come from :func:`evit_perception.evaluation.coco_metrics.plot_pr_curves`.
matplotlib is imported inside the functions (headless ``Agg``) so the node never pays for it.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np

PRED_COLOUR = "#ff3b30"
TRUTH_COLOUR = "#34c759"


def plot_latency_histogram(latencies_ms: Sequence[float], path: str, title: str = "Latency") -> None:
    """Histogram of per-frame latencies with p50/p95/p99 marked."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = np.asarray(list(latencies_ms), dtype=np.float64)
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=110)
    if values.size:
        ax.hist(values, bins=min(40, max(5, values.size // 3)), color="#0a84ff", alpha=0.85)
        for q, style in ((50, "-"), (95, "--"), (99, ":")):
            v = float(np.percentile(values, q))
            ax.axvline(v, color="black", linestyle=style, linewidth=1, label=f"p{q} {v:.1f} ms")
        ax.legend(loc="upper right", fontsize=8)
    else:
        ax.text(0.5, 0.5, "no latencies measured", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("latency per frame [ms]")
    ax.set_ylabel("frames")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_frame_strip(frames: Sequence[Dict[str, object]], class_names: Sequence[str], path: str,
                     title: Optional[str] = None) -> None:
    """A row of frames, predicted boxes in red (with class and score), true boxes in green.

    Each entry of ``frames`` holds ``bgr`` (HxWx3 uint8), ``pred_boxes`` (N,4 xyxy),
    ``pred_scores``, ``pred_classes`` (indices), optional ``true_boxes`` and ``label``.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    count = max(1, len(frames))
    fig, axes = plt.subplots(1, count, figsize=(3.2 * count, 2.8), dpi=110, squeeze=False)
    for ax, frame in zip(axes[0], frames):
        bgr = np.asarray(frame["bgr"])
        ax.imshow(bgr[:, :, ::-1])
        truth = np.asarray(frame.get("true_boxes", np.zeros((0, 4))), dtype=np.float32).reshape(-1, 4)
        for x1, y1, x2, y2 in truth:
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=TRUTH_COLOUR,
                                   linewidth=1.4))
        boxes = np.asarray(frame.get("pred_boxes", np.zeros((0, 4))), dtype=np.float32).reshape(-1, 4)
        scores: List[float] = list(np.asarray(frame.get("pred_scores", [])).reshape(-1))
        classes: List[int] = [int(c) for c in np.asarray(frame.get("pred_classes", [])).reshape(-1)]
        for (x1, y1, x2, y2), score, cls in zip(boxes, scores, classes):
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=PRED_COLOUR,
                                   linewidth=1.0, linestyle="--"))
            name = class_names[cls] if 0 <= cls < len(class_names) else str(cls)
            ax.text(x1, y1, f"{name} {score:.2f}", color="white", fontsize=5,
                    bbox=dict(facecolor=PRED_COLOUR, alpha=0.7, pad=0.5, linewidth=0))
        ax.set_title(str(frame.get("label", "")), fontsize=7)
        ax.axis("off")
    for ax in axes[0][len(frames):]:
        ax.axis("off")
    fig.suptitle(title or "predicted (red, dashed) vs true (green)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
