"""MT-Bench judging: FastChat's ``llm_judge`` single-answer grading of the answers instruction-tuning
trials wrote, comparable with published MT-Bench scores (docs/judging.md).

- ``prompts``: which judge prompt a question's turn gets, the user prompt, the rating parser;
- ``grading``: the loop every backend shares (judge, read the rating, retry once what has none);
- ``local`` (torch) / ``endpoint`` (openai client): the two backends;
- ``check``: the judge's sanity check (good answers against empty and off-topic ones);
- ``output``: OUT/mt_bench/ in FastChat's layout; ``scores``: show_result's means;
- ``run``: the entry points ``judge_run`` / ``judge_answers``.

Nothing here imports torch at module level except ``local``, loaded only when a local judge runs.
"""

from pefteval.judging.identity import judge_identity, judge_slug
from pefteval.judging.output import load_checks, load_judgments
from pefteval.judging.prompts import parse_rating
from pefteval.judging.run import JudgeSummary, collect_answers, judge_answers, judge_run
from pefteval.judging.scores import mt_bench_scores

__all__ = ["JudgeSummary", "collect_answers", "judge_answers", "judge_identity", "judge_run", "judge_slug",
           "load_checks", "load_judgments", "mt_bench_scores", "parse_rating"]
