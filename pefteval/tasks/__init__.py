"""The task registry. A task is data plus a fixed set of hooks (``pefteval.tasks.base.Task``):
its splits (from a data directory in canonical release formats, or the hub), prompts, scorer,
selection metric and report columns. One module or package per family registers its tasks."""

from __future__ import annotations

from pefteval.tasks import alpaca as _alpaca
from pefteval.tasks import fewshot as _fewshot
from pefteval.tasks import glue as _glue
from pefteval.tasks import gsm8k as _gsm8k
from pefteval.tasks import sql as _sql
from pefteval.tasks import squad as _squad
from pefteval.tasks import viggo as _viggo
from pefteval.tasks.base import (
    TASKS,
    Example,
    Prompting,
    QAExample,
    Scored,
    Task,
    TaskSplits,
    file_sha256,
    get_task,
    hold_out_validation,
    load_hub_split,
    read_data_bytes,
    read_data_text,
    read_json_file,
    record_data_file,
    register,
    resolve_data_dir,
    track_data_reads,
)

# registration order is the order `pefteval list` shows: GLUE, SQuAD, the generation tasks (ViGGO,
# SQL, GSM8K), then the few-shot families (which also give SST-2 its few-shot pattern, so they come after GLUE),
# then instruction tuning (Alpaca, judged on MT-Bench)
_FAMILIES = (_glue, _squad, _viggo, _sql, _gsm8k, _fewshot, _alpaca)
for _family in _FAMILIES:
    _family.register_tasks()

__all__ = ["TASKS", "Example", "Prompting", "QAExample", "Scored", "Task", "TaskSplits", "file_sha256", "get_task",
           "hold_out_validation", "load_hub_split", "read_data_bytes", "read_data_text", "read_json_file",
           "record_data_file", "register", "resolve_data_dir", "track_data_reads"]
