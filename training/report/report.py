"""The stage-by-stage compression report: report.json, report.md, report.png and a table.

``report.json`` is ``{"stages": [row, ...], "reference": name, ...}``; each row has at
least ``name, params, macs, size_mb, latency_ms, map50, map50_95, input_size``. Stages are
keyed by name, so other tools (e.g. data-free KD) add or replace rows with
:func:`add_stages` without knowing the pipeline; ratios against the reference stage (the
teacher by default) are recomputed every time the report is written.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence

REQUIRED_KEYS = ("name", "params", "macs", "size_mb", "latency_ms", "map50", "map50_95", "input_size")
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
REPORT_PNG = "report.png"


def validate_stage(row: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` naming the missing keys of a stage row."""
    missing = [k for k in REQUIRED_KEYS if k not in row]
    if missing:
        raise ValueError(f"stage {row.get('name', '?')!r} lacks {', '.join(missing)}")


def load_report(run_dir: str) -> Dict[str, Any]:
    """``run_dir/report.json`` (a run directory or the JSON file itself)."""
    path = run_dir if run_dir.endswith(".json") else os.path.join(run_dir, REPORT_JSON)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no report at {path}; run `evit compress CONFIG` first")
    with open(path) as fh:
        doc = json.load(fh)
    if not isinstance(doc.get("stages"), list):
        raise ValueError(f"{path} has no 'stages' list")
    return doc


def merge_stages(existing: Sequence[Mapping[str, Any]], new: Sequence[Mapping[str, Any]]) -> List[Dict[str, Any]]:
    """Rows of ``existing`` with same-named rows replaced by ``new``; new names appended."""
    rows = [dict(r) for r in existing]
    index = {r["name"]: i for i, r in enumerate(rows)}
    for row in new:
        validate_stage(row)
        if row["name"] in index:
            rows[index[row["name"]]] = dict(row)
        else:
            index[row["name"]] = len(rows)
            rows.append(dict(row))
    return rows


def add_ratios(rows: List[Dict[str, Any]], reference: Optional[str]) -> Optional[str]:
    """Add ``params_x``, ``latency_x`` (reference / stage: bigger is better) and
    ``map50_rel`` (stage / reference) to each row; returns the reference used."""
    ref = next((r for r in rows if r["name"] == reference), rows[0] if rows else None)
    if ref is None:
        return None
    for row in rows:
        row["params_x"] = _ratio(ref["params"], row["params"])
        row["latency_x"] = _ratio(ref["latency_ms"], row["latency_ms"])
        row["map50_rel"] = _ratio(row["map50"], ref["map50"])
    return ref["name"]


def _ratio(num: Any, den: Any) -> Optional[float]:
    if num is None or den is None or not den:
        return None
    return round(float(num) / float(den), 3)


def write_report(run_dir: str, stages: Sequence[Mapping[str, Any]], reference: Optional[str] = "teacher",
                 info: Optional[Mapping[str, Any]] = None, replace: bool = False,
                 show: bool = True) -> Dict[str, Any]:
    """Write report.json/.md/.png under ``run_dir`` and print the table; returns the report.

    Rows already in ``run_dir/report.json`` are kept (same names replaced) unless ``replace``.
    """
    os.makedirs(run_dir, exist_ok=True)
    existing: Dict[str, Any] = {}
    if not replace and os.path.isfile(os.path.join(run_dir, REPORT_JSON)):
        existing = load_report(run_dir)
    rows = merge_stages(existing.get("stages", []), stages)
    doc: Dict[str, Any] = {k: v for k, v in existing.items() if k != "stages"}
    doc.update(info or {})
    doc["reference"] = add_ratios(rows, reference or existing.get("reference"))
    doc["stages"] = rows
    with open(os.path.join(run_dir, REPORT_JSON), "w") as fh:
        json.dump(doc, fh, indent=2)
    with open(os.path.join(run_dir, REPORT_MD), "w") as fh:
        fh.write(markdown(doc))
    plot(doc, os.path.join(run_dir, REPORT_PNG))
    if show:
        print_table(doc)
    return doc


def add_stages(run_dir: str, stages: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
    """Add (or replace by name) stages in an existing report and rewrite all its files."""
    doc = load_report(run_dir)
    return write_report(run_dir, stages, reference=doc.get("reference"), show=False)


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


_COLUMNS = (
    ("stage", "name", "s"), ("input", "input_size", "size"), ("params", "params", ",d"),
    ("GMACs", "macs", "gmacs"), ("size MB", "size_mb", ".2f"), ("latency ms", "latency_ms", ".2f"),
    ("p95 ms", "latency_p95_ms", ".2f"), ("mAP@.5", "map50", ".3f"), ("mAP@.5:.95", "map50_95", ".3f"),
    ("params x", "params_x", ".1f"), ("speed x", "latency_x", ".2f"), ("mAP@.5 rel", "map50_rel", ".3f"),
)


def _cells(row: Mapping[str, Any]) -> List[str]:
    cells = []
    for _, key, spec in _COLUMNS:
        value = row.get(key)
        if spec == "size":
            cells.append("x".join(str(v) for v in value) if value else "-")
        elif spec == "gmacs":
            cells.append(_fmt(None if value is None else value / 1e9, ".3f"))
        elif spec == "s":
            cells.append(str(value))
        else:
            cells.append(_fmt(value, spec))
    return cells


def markdown(doc: Mapping[str, Any]) -> str:
    """The report as a Markdown table with a short header."""
    lines = ["# Compression report", ""]
    if doc.get("config"):
        lines.append(f"Config: `{doc['config']}`")
    threads = {r.get("threads") for r in doc["stages"]}
    lines.append(f"Latency: ONNX Runtime CPU, batch 1, median of warm runs, "
                 f"{'/'.join(str(t) for t in threads if t)} thread(s). Ratios against "
                 f"`{doc.get('reference')}` (params x, speed x: how many times smaller/faster).")
    lines += ["", "| " + " | ".join(c[0] for c in _COLUMNS) + " |",
              "|" + "|".join("---" for _ in _COLUMNS) + "|"]
    for row in doc["stages"]:
        lines.append("| " + " | ".join(_cells(row)) + " |")
    for key in ("targets", "notes"):
        if doc.get(key):
            lines += ["", f"## {key.capitalize()}", ""]
            value = doc[key]
            if isinstance(value, Mapping):
                lines += [f"- {k}: {v}" for k, v in value.items()]
            else:
                lines += [f"- {v}" for v in value]
    return "\n".join(lines) + "\n"


def print_table(doc: Mapping[str, Any]) -> None:
    """The report table on the terminal (rich)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="evit compression report")
    for title, _, spec in _COLUMNS:
        table.add_column(title, justify="left" if spec == "s" else "right")
    for row in doc["stages"]:
        table.add_row(*_cells(row))
    Console(width=max(Console().width, 150)).print(table)


def plot(doc: Mapping[str, Any], path: str) -> str:
    """Accuracy (mAP@0.5) against ONNX Runtime latency, one labelled point per stage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for row in doc["stages"]:
        if row.get("map50") is None or row.get("latency_ms") is None:
            continue
        size = 30 + 300 * (row["params"] / max(r["params"] for r in doc["stages"]))
        ax.scatter(row["latency_ms"], row["map50"], s=size, alpha=0.7)
        ax.annotate(f"{row['name']}\n{row['params'] / 1e6:.2f}M params", (row["latency_ms"], row["map50"]),
                    textcoords="offset points", xytext=(6, 6), fontsize=8)
    ax.set_xlabel("ONNX Runtime latency, batch 1 (ms, median)")
    ax.set_ylabel("mAP@0.5 (validation)")
    ax.set_title("Accuracy vs latency per compression stage (marker area ~ params)")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
