"""Check records, the suite's output files (validation.json, validation.md) and helpers."""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

OPS = {">=": lambda v, t: v >= t, "<=": lambda v, t: v <= t, "<": lambda v, t: v < t,
       ">": lambda v, t: v > t, "==": lambda v, t: v == t}


@dataclass
class Check:
    """One known-answer check. ``threshold`` None: reported, not judged."""

    id: str
    level: str
    name: str
    value: float | None
    threshold: float | None = None
    op: str = ">="
    applies_to: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    passed: bool | None = None

    def __post_init__(self) -> None:
        if self.value is not None:
            self.value = float(self.value)
        if self.threshold is not None and self.passed is None:
            v = self.value
            self.passed = bool(v is not None and not math.isnan(v)
                               and OPS[self.op](v, self.threshold))


def jsonable(obj: Any) -> Any:
    """Numpy scalars/arrays and dataclasses to plain JSON types; NaN to None."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return None if math.isnan(f) or math.isinf(f) else f
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    return obj


def _fmt(v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    a = abs(v)
    if a != 0 and (a < 1e-3 or a >= 1e4):
        return f"{v:.2e}"
    return f"{v:.4f}"


def table(checks: list[Check]) -> str:
    """A Markdown table: one row per check."""
    rows = ["| id | level | check | index | value | threshold | passed |",
            "|---|---|---|---|---|---|---|"]
    for c in checks:
        thr = "reported" if c.threshold is None else f"{c.op} {_fmt(c.threshold)}"
        ok = "–" if c.passed is None else ("yes" if c.passed else "**NO**")
        name = c.name.replace("|", "\\|")
        rows.append(f"| {c.id} | {c.level} | {name} | {c.applies_to or '–'} | {_fmt(c.value)} "
                    f"| {thr} | {ok} |")
    return "\n".join(rows)


def write_results(out: Path, checks: list[Check], meta: dict[str, Any]) -> dict[str, Any]:
    """validation.json (one entry per check) and validation.md (the table), atomically."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    judged = [c for c in checks if c.passed is not None]
    doc = {"passed": all(c.passed for c in judged), "n_checks": len(judged),
           "n_failed": sum(not c.passed for c in judged), "meta": meta,
           "checks": {c.id: {k: v for k, v in asdict(c).items() if k != "id"} for c in checks}}
    doc = jsonable(doc)
    _atomic(out / "validation.json", json.dumps(doc, indent=2) + "\n")
    md = (f"# linbridge validate\n\n{table(checks)}\n\n"
          f"{doc['n_checks'] - doc['n_failed']} of {doc['n_checks']} judged checks passed; "
          f"wall time {meta.get('wall_seconds', float('nan')):.0f} s "
          f"({'quick' if meta.get('quick') else 'full'} suite).\n")
    _atomic(out / "validation.md", md)
    return doc


def _atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


class Timer:
    def __init__(self):
        self.t0 = time.perf_counter()
        self.parts: dict[str, float] = {}

    def mark(self, name: str) -> None:
        now = time.perf_counter()
        self.parts[name] = now - self.t0 - sum(self.parts.values())


def spearman(a, b) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(np.asarray(a), np.asarray(b))[0])


def corr(a, b) -> float:
    a, b = np.ravel(np.asarray(a, dtype=np.float64)), np.ravel(np.asarray(b, dtype=np.float64))
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def auc(scores, labels) -> float:
    """Area under the ROC curve of ``scores`` for the positive ``labels`` (ties count 1/2)."""
    from scipy.stats import rankdata

    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels).astype(bool)
    n1, n0 = int(y.sum()), int((~y).sum())
    if n1 == 0 or n0 == 0:
        return float("nan")
    ranks = rankdata(s)
    return float((ranks[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))
