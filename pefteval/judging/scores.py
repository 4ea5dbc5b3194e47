"""MT-Bench scores from judgments, as FastChat's ``show_result.py`` computes them (single mode):
per judge and model, the mean rating of turn 1, of turn 2, and of both together ("Average"), over
the rated judgments only (score -1, unrated, counts in no mean).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pefteval.judging.prompts import UNRATED


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def mt_bench_scores(judgments: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (judge slug, model) of ``load_judgments`` lines: ``turn_1``, ``turn_2``, ``score``
    (FastChat's average of both turns), ``rated``, ``unrated``, ``questions`` (distinct question ids
    judged) and the judge's identity (``judge``, without the prompt name). Sorted by judge, then
    score (best first)."""
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    for row in judgments:
        key = (str(row.get("judge_slug", "")), row["model"])
        group = groups.setdefault(key, {"turns": {1: [], 2: []}, "unrated": 0, "questions": set(),
                                        "judge": {k: v for k, v in (row.get("judge_info") or {}).items()
                                                  if k != "prompt"}})
        group["questions"].add(row["question_id"])
        if row["score"] == UNRATED:
            group["unrated"] += 1
        else:
            group["turns"].setdefault(int(row["turn"]), []).append(float(row["score"]))
    table = []
    for (slug, model), g in groups.items():
        rated = [s for scores in g["turns"].values() for s in scores]
        table.append({"judge_slug": slug, "judge": g["judge"], "model": model, "turn_1": _mean(g["turns"][1]),
                      "turn_2": _mean(g["turns"][2]), "score": _mean(rated), "rated": len(rated),
                      "unrated": g["unrated"], "questions": len(g["questions"])})
    return sorted(table, key=lambda r: (r["judge_slug"], -(r["score"] if r["score"] is not None else -1e9),
                                        r["model"]))
