"""Training history: per-step losses and evaluations, saved as JSON and a PNG curve."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional


class TrainingHistory:
    """Append-only log of ``{"step", ...scalars}`` records."""

    def __init__(self, records: Optional[List[Dict[str, Any]]] = None,
                 evaluations: Optional[List[Dict[str, Any]]] = None) -> None:
        self.records: List[Dict[str, Any]] = list(records or [])
        self.evaluations: List[Dict[str, Any]] = list(evaluations or [])

    def log(self, step: int, values: Mapping[str, float]) -> None:
        self.records.append({"step": int(step), **{k: float(v) for k, v in values.items()}})

    def log_eval(self, step: int, metrics: Mapping[str, Any]) -> None:
        self.evaluations.append({"step": int(step), **{k: v for k, v in metrics.items()
                                                       if isinstance(v, (int, float))}})

    def state_dict(self) -> Dict[str, Any]:
        return {"records": self.records, "evaluations": self.evaluations}

    @classmethod
    def from_state(cls, state: Optional[Mapping[str, Any]]) -> "TrainingHistory":
        state = state or {}
        return cls(state.get("records"), state.get("evaluations"))

    def save(self, out_dir: Path, title: str = "training") -> None:
        """``history.json`` and ``loss.png`` (loss terms per step, mAP if evaluated)."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "history.json").write_text(json.dumps(self.state_dict(), indent=1))
        if not self.records:
            return
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        keys = [k for k in self.records[-1] if k not in ("step", "lr", "img_per_s")]
        steps = [r["step"] for r in self.records]
        panels = 2 if self.evaluations else 1
        fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4), squeeze=False)
        ax = axes[0][0]
        for key in keys:
            ax.plot(steps, [r.get(key, float("nan")) for r in self.records], label=key)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_yscale("log")
        ax.set_title(f"{title}: losses")
        ax.legend(fontsize=8)
        if self.evaluations:
            ax = axes[0][1]
            for key in ("map50", "map50_95"):
                ax.plot([e["step"] for e in self.evaluations],
                        [e.get(key, float("nan")) for e in self.evaluations], marker="o", label=key)
            ax.set_xlabel("step")
            ax.set_title("validation mAP")
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out_dir / "loss.png", dpi=100)
        plt.close(fig)
