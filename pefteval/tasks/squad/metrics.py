"""SQuAD v1.1 scores: the official evaluate-v1.1.py normalisation, exact match and F1, and the
worst case per source question of Adversarial SQuAD."""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence


def normalize_answer(text: str) -> str:
    """Lower case, drop punctuation, the articles a/an/the, and extra whitespace."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def squad_f1(prediction: str, truth: str) -> float:
    pred_tokens = normalize_answer(prediction).split()
    truth_tokens = normalize_answer(truth).split()
    common = Counter(pred_tokens) & Counter(truth_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(pred_tokens)
    recall = same / len(truth_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_exact(prediction: str, truth: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(truth))


def squad_scores(prediction: str, truths: Sequence[str]) -> tuple[float, float]:
    """(EM, F1) of one prediction: the maximum over the gold answers, as the official script."""
    if not truths:
        raise ValueError("a SQuAD question needs at least one gold answer")
    return max(squad_exact(prediction, t) for t in truths), max(squad_f1(prediction, t) for t in truths)


def squad_metrics(predictions: Sequence[str], truths: Sequence[Sequence[str]],
                  groups: Sequence[str] | None = None) -> dict[str, float]:
    """EM and F1 in [0, 1] averaged over questions. With ``groups`` (the source question of
    each item, as in Adversarial SQuAD), also the worst case per group: each source question
    scores the minimum over its original and all its adversarial variants, separately for EM
    and F1, and the worst-case scores average over the groups."""
    if len(predictions) != len(truths):
        raise ValueError(f"{len(predictions)} predictions for {len(truths)} questions")
    if not predictions:
        return {"exact_match": float("nan"), "f1": float("nan"), "n": 0}
    scores = [squad_scores(p, t) for p, t in zip(predictions, truths)]
    out = {"exact_match": sum(s[0] for s in scores) / len(scores), "f1": sum(s[1] for s in scores) / len(scores),
           "n": len(scores)}
    if groups is not None:
        if len(groups) != len(scores):
            raise ValueError(f"{len(groups)} group ids for {len(scores)} questions")
        worst: dict[str, list[float]] = {}
        for group, (em, f1) in zip(groups, scores):
            cur = worst.setdefault(group, [em, f1])
            cur[0], cur[1] = min(cur[0], em), min(cur[1], f1)
        out["worst_exact_match"] = sum(v[0] for v in worst.values()) / len(worst)
        out["worst_f1"] = sum(v[1] for v in worst.values()) / len(worst)
        out["groups"] = len(worst)
    return out
