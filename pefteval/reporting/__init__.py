"""Build the comparison table (the paper's Table 3 shape) from the results store.

Protocol: for each method and task, the grid point with the best mean validation
accuracy over seeds is selected; its clean (original) and adversarial test
accuracies are reported as mean (sample std) over seeds. The store is the only
input, so a report can be rebuilt at any time without retraining.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pefteval.metrics import mean_std
from pefteval.reporting import generation as gen
from pefteval.reporting import mt_bench as mtb
from pefteval.reporting import significance as sig
from pefteval.reporting.datascaling import build_data_scaling, render_data_scaling_markdown
from pefteval.reporting.fmt import mean_std_cell
from pefteval.reporting.scaling import build_scaling, render_scaling_markdown, scaling_rows
from pefteval.selection import Selection, _val_score, report_group, select_grid_points, task_label
from pefteval.tasks import TASKS

FORMATS = ("markdown", "csv", "latex")


@dataclass
class Cell:
    orig: tuple[float, float]
    adv: tuple[float, float]
    seeds: int
    hp: dict[str, Any]
    validation: float


@dataclass
class MethodRow:
    method: str
    cells: dict[str, Cell] = field(default_factory=dict)
    trainable: list[int] = field(default_factory=list)
    base: list[int] = field(default_factory=list)
    train_seconds: list[float] = field(default_factory=list)
    peak_rss_mb: list[float] = field(default_factory=list)
    # on CUDA: the caching allocator's peaks (allocated, reserved) per trial
    peak_device_mb: list[tuple[float, float]] = field(default_factory=list)


@dataclass
class ComparisonTable:
    tasks: list[str]  # classification tasks (Table 3 shape)
    rows: list[MethodRow]
    notes: list[str]
    adversarial_split: str = "advglue"
    qa: list[QATable] = field(default_factory=list)  # one Table-4-shaped table per QA task
    seeds: list[int] = field(default_factory=list)
    scaling: Any = None  # ScalingTable when the experiment varies trainable parameters within a family
    generation: Any = None  # GenTable (Table 1 shape) when the experiment has generation tasks
    data_scaling: Any = None  # DataScalingTable (Table 7 / Figure 2) when the experiment has k-shot trials
    mt_bench: Any = None  # MTBenchTable (Table 2 shape) when the experiment has instruction-tuning tasks
    significance: Any = None  # SignificanceTable: every method against FFT (reporting/significance.py)

    @property
    def device_memory(self) -> bool:
        """Whether any trial ran on CUDA (and so has a 'GPU MB' column)."""
        return any(row.peak_device_mb for row in self.rows)

    def averages(self, row: MethodRow) -> tuple[float, float]:
        if not self.tasks or any(t not in row.cells for t in self.tasks):
            return float("nan"), float("nan")
        orig = sum(row.cells[t].orig[0] for t in self.tasks) / len(self.tasks)
        adv = sum(row.cells[t].adv[0] for t in self.tasks) / len(self.tasks)
        return orig, adv


@dataclass
class QACell:
    """EM and F1 (mean, std) per split; adversarial splits in worst-case and per-question form."""

    scores: dict[str, dict[str, tuple[float, float]]]
    seeds: int
    hp: dict[str, Any]
    validation: float


@dataclass
class QATable:
    task: str
    splits: list[str]  # "test" first, then the adversarial sets present
    rows: dict[str, QACell]
    mode: str  # extractive | generative


def _qa_table(task: str, sel: Selection) -> QATable:
    adversarial = TASKS[task].adversarial if task in TASKS else ()
    rows: dict[str, QACell] = {}
    present: set[str] = set()
    mode = "extractive"
    for method in sel.methods:
        if (task, method) not in sel.chosen:
            continue
        hp, recs = sel.chosen[(task, method)]
        scores: dict[str, dict[str, tuple[float, float]]] = {}
        for split in ["test", *adversarial]:
            have = [r["metrics"][split] for r in recs if split in r["metrics"]]
            if not have:
                continue
            present.add(split)
            keys = ("exact_match", "f1", "worst_exact_match", "worst_f1", "source_exact_match", "source_f1")
            scores[split] = {k: mean_std([m[k] for m in have]) for k in keys if all(k in m for m in have)}
        mode = recs[0].get("qa_mode", mode)
        rows[method] = QACell(scores, len(recs), hp, mean_std([_val_score(r) for r in recs])[0])
    splits = [s for s in ["test", *adversarial] if s in present]
    return QATable(task, splits, rows, mode)


def build_table(records: Iterable[dict[str, Any]], failed: int = 0, judgments: list[dict[str, Any]] | None = None,
                checks: list[dict[str, Any]] | None = None, scores_of: Any = None) -> ComparisonTable:
    """The report's tables from the store's records; ``judgments`` and ``checks`` are the MT-Bench
    judgments and judge sanity checks saved under ``OUT/mt_bench`` (instruction-tuning tasks);
    ``scores_of`` (a trial's record -> split -> example id -> score, e.g.
    ``significance.scores_from(OUT)``) adds the significance of every method against FFT."""
    records = [r for r in records if r.get("status") == "complete"]
    sel = select_grid_points(records)
    group = {task_label(r["config"]): report_group(r) for r in records}
    tasks = [t for t in sel.tasks if group[t] == "classification"]
    qa_tasks = [t for t in sel.tasks if group[t] == "qa"]
    gen_tasks = [t for t in sel.tasks if group[t] == "generation"]
    methods = sel.methods
    rows = {m: MethodRow(m) for m in methods}
    notes: set[str] = set()
    seeds_seen: set[int] = set()
    for (task, method), (hp, chosen) in sel.chosen.items():
        row = rows[method]
        if task in tasks:
            row.cells[task] = Cell(
                orig=mean_std([r["metrics"]["test"]["accuracy"] for r in chosen]),
                adv=mean_std([r["metrics"]["advglue"]["accuracy"] for r in chosen if "advglue" in r["metrics"]]),
                seeds=len(chosen), hp=hp, validation=mean_std([_val_score(r) for r in chosen])[0],
            )
        for r in chosen:
            row.trainable.append(r["params"]["trainable"])
            row.base.append(r["params"]["base"])
            row.train_seconds.append(r["train_seconds"])
            row.peak_rss_mb.append(r.get("peak_rss_mb", float("nan")))
            if "peak_device_allocated_mb" in r:
                row.peak_device_mb.append((r["peak_device_allocated_mb"], r["peak_device_reserved_mb"]))
            seeds_seen.add(r["config"]["seed"])
            notes.update(r.get("notes", []))
    first = records[0] if records else None
    header_notes = []
    if first is not None:
        hp = first["config"]["training"]
        processes = (f" × {first['processes']} processes ({first.get('parallelism', 'ddp')})"
                     if first.get("processes", 1) > 1 else "")
        header_notes.append(f"Model: {first['config']['model']}; device: {first.get('device', '?')}{processes}; "
                            f"versions: {', '.join(f'{k} {v}' for k, v in first.get('versions', {}).items())}.")
        if tasks:
            header_notes.append(f"Accuracy in %, mean (sample std) over seeds {sorted(seeds_seen)}; 'orig' is the GLUE "
                                "dev set (or its held-out test part, see below), 'adv' the matching AdvGLUE dev set.")
        header_notes.append("Per method and task, the grid point with the best mean validation score (accuracy; F1 "
                            "for QA; ROUGE-L for instruction tuning) is selected; the validation set is held out from "
                            "the training data, never the test set.")
        if any(r["params"].get("head", 0) for r in records):
            header_notes.append("A new task head trains under every method and is counted in 'Trainable'; "
                                "'%' is relative to the pretrained model with its head.")
        else:
            header_notes.append("No new head: decoders answer with their own LM head; '%' is relative to the "
                                "pretrained model.")
        header_notes.append(f"Training: {hp['epochs']} epoch(s), max length {hp['max_seq_length']}, "
                            f"{hp['precision']}; 'Time' is mean training seconds per trial (evaluation excluded); "
                            "'Peak MB' is the mean peak resident memory of a trial's own process."
                            + (" 'GPU MB' is the mean peak device memory PyTorch allocated / reserved, counted from "
                               "each trial's start." if any("peak_device_allocated_mb" in r for r in records) else ""))
    if sel.hidden:
        header_notes.append(f"{sel.hidden} older trial(s) in the store have another setup (model, data or method "
                            "settings) than the latest trials of the same task and method, and are not shown.")
    if failed:
        header_notes.append(f"{failed} trial(s) failed and are left out; see `results.sqlite` and their run logs.")
    table = ComparisonTable(tasks, [rows[m] for m in methods], header_notes + sorted(notes))
    table.qa = [_qa_table(t, sel) for t in qa_tasks]
    table.seeds = sorted(seeds_seen)
    table.scaling = build_scaling(records, sel, tasks, qa_tasks)
    table.generation = gen.build_generation(sel, gen_tasks)
    table.data_scaling = build_data_scaling(records, sel, [t for t in sel.tasks if group[t] == "fewshot"])
    table.mt_bench = mtb.build_mt_bench(sel, [t for t in sel.tasks if group[t] == "instruct"], judgments or [],
                                        checks or [])
    if scores_of is not None:
        table.significance = sig.build_significance(sel, group, scores_of, judgments)
        if table.significance is not None and tasks:
            table.notes.insert(2, "▲ / ▼ / ≈ after a cell: significantly above FFT / below FFT / no significant "
                                  "difference (Holm-adjusted, both seeds and test examples counted; see "
                                  "'Significance against FFT').")
    return table


def _row_extra(table: ComparisonTable) -> dict[str, list[str]]:
    """Trainable, %, Time and memory cells per method."""
    return {row.method: [_count(row.trainable), _share(row), f"{_mean(row.train_seconds):.1f}",
                         *_memory_cells(row, table.device_memory)] for row in table.rows}


def _generation_rows(table: ComparisonTable, methods: list[str]) -> tuple[list[str], list[list[str]]]:
    return gen.generation_rows(table.generation, methods, _row_extra(table), tuple(_memory_headers(table)))


def _memory_headers(table: ComparisonTable) -> list[str]:
    return ["Peak MB", "GPU MB"] if table.device_memory else ["Peak MB"]


def _memory_cells(row: MethodRow, device_memory: bool) -> list[str]:
    """Peak RSS, and on CUDA peak device memory allocated/reserved (a CPU report keeps one column)."""
    peak = _mean(row.peak_rss_mb)
    cells = ["–" if math.isnan(peak) else f"{peak:.0f}"]
    if device_memory:
        means = _device_means(row)
        cells.append(f"{means[0]:.0f}/{means[1]:.0f}" if means else "–")
    return cells


def _device_means(row: MethodRow) -> tuple[float, float] | None:
    """Mean peak device memory (allocated, reserved) of a method's trials; None without CUDA trials."""
    pairs = row.peak_device_mb
    return (_mean([a for a, _ in pairs]), _mean([b for _, b in pairs])) if pairs else None


def _pct(value: float) -> str:
    return "–" if math.isnan(value) else f"{100 * value:.2f}"




def _count(values: list[int]) -> str:
    if not values:
        return "–"
    lo, hi = min(values), max(values)
    return f"{lo:,}" if lo == hi else f"{lo:,}–{hi:,}"


def _share(row: MethodRow) -> str:
    if not row.trainable:
        return "–"
    return f"{100 * sum(row.trainable) / sum(row.base):.3f}"


def _mean(values: list[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return sum(values) / len(values) if values else float("nan")


def _display(task: str) -> str:
    return TASKS[task].display if task in TASKS else task


def table_rows(table: ComparisonTable) -> tuple[list[str], list[list[str]]]:
    header = ["Method"]
    for task in table.tasks:
        header += [f"{_display(task)} orig", f"{_display(task)} adv"]
    header += ["Avg orig", "Avg adv", "Trainable", "%", "Time (s)", *_memory_headers(table)]
    body = []
    for row in table.rows:
        line = [row.method]
        for task in table.tasks:
            cell = row.cells.get(task)
            line += ([_marked(table, mean_std_cell(cell.orig), task, "test", row.method),
                      _marked(table, mean_std_cell(cell.adv), task, "advglue", row.method)] if cell else ["–", "–"])
        avg_o, avg_a = table.averages(row)
        line += [_pct(avg_o), _pct(avg_a), _count(row.trainable), _share(row), f"{_mean(row.train_seconds):.1f}",
                 *_memory_cells(row, table.device_memory)]
        body.append(line)
    return header, body


def _marked(table: ComparisonTable, text: str, task: str, split: str, method: str) -> str:
    """A cell with its verdict against FFT (▲ ▼ ≈) when the report has the significance."""
    mark = table.significance.mark(task, split, method) if table.significance is not None else ""
    return f"{text} {mark}" if mark else text


def selection_lines(table: ComparisonTable) -> list[str]:
    lines = []
    for row in table.rows:
        for task in table.tasks:
            cell = row.cells.get(task)
            if cell:
                hp = cell.hp
                lines.append(f"{row.method} / {_display(task)}: lr {hp['lr']:g}, warmup {hp['warmup_ratio']:g}, "
                             f"batch {hp['batch_size']}; validation {_pct(cell.validation)}; {cell.seeds} seed(s)")
    return lines


def _em_f1(scores: dict[str, tuple[float, float]] | None, worst: bool, prefix: str | None = None) -> str:
    prefix = ("worst_" if worst else "") if prefix is None else prefix
    if scores is None or prefix + "f1" not in scores:
        return "–"
    (em, em_sd), (f1, f1_sd) = scores[prefix + "exact_match"], scores[prefix + "f1"]

    def sd(v: float) -> str:
        return "–" if math.isnan(v) else f"{100 * v:.1f}"

    return f"{100 * em:.1f}/{100 * f1:.1f} ({sd(em_sd)}/{sd(f1_sd)})"


def qa_rows(table: ComparisonTable, qa: QATable, worst: bool = True) -> tuple[list[str], list[list[str]]]:
    """Rows: methods; columns: original (SQuAD dev) and each adversarial set, EM / F1 mean (std)."""
    short = _short_names(qa.task)
    adversarial = qa.splits[1:]
    header = ["Method", "Original"] + (["Orig. (src)"] if worst and adversarial else [])
    header += [short.get(s, s) for s in adversarial] + ["Trainable", "%", "Time (s)", *_memory_headers(table)]
    rows_by_method = {r.method: r for r in table.rows}
    body = []
    for method, cell in qa.rows.items():
        line = [method, _em_f1(cell.scores.get("test"), worst=False)]
        if worst and adversarial:
            line.append(_em_f1(cell.scores.get(adversarial[0]), worst=False, prefix="source_"))
        line += [_em_f1(cell.scores.get(s), worst=worst) for s in qa.splits[1:]]
        row = rows_by_method[method]
        line += [_count(row.trainable), _share(row), f"{_mean(row.train_seconds):.1f}",
                 *_memory_cells(row, table.device_memory)]
        body.append(line)
    return header, body


def _md_table(header: list[str], body: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    return out + ["| " + " | ".join(line) + " |" for line in body]


def _short_names(task: str) -> dict[str, str]:
    return TASKS[task].short_names if task in TASKS else {}


def render_qa_markdown(table: ComparisonTable, qa: QATable) -> list[str]:
    short = _short_names(qa.task)
    names = ", ".join(f"{short.get(s, s)} = {s}" for s in qa.splits[1:])
    out = [f"### {_display(qa.task)} ({qa.mode} QA): EM/F1 in %, mean (std EM/std F1) over seeds {table.seeds}", ""]
    out += _md_table(*qa_rows(table, qa, worst=True))
    out += ["", f"- Original: SQuAD v1.1 dev. Adversarial sets: {names}." if names else "- Original: SQuAD v1.1 dev.",
            "- Adversarial columns follow the benchmark's convention: each source question scores its worst case "
            "over the original and all its adversarial variants (EM and F1 each).",
            "- Orig. (src): the same models on just the original questions behind the adversarial columns "
            "(their clean baseline; 'Original' is the whole, possibly capped, dev set)."]
    if len(qa.splits) > 1:
        out += ["", "Per question (every adversarial item scored on its own, originals included):", ""]
        out += _md_table(*qa_rows(table, qa, worst=False))
    out += ["", "Selected grid points:"]
    for method, cell in qa.rows.items():
        hp = cell.hp
        out.append(f"- {method}: lr {hp['lr']:g}, warmup {hp['warmup_ratio']:g}, batch {hp['batch_size']}; "
                   f"validation F1 {_pct(cell.validation)}; {cell.seeds} seed(s)")
    return out


def render_markdown(table: ComparisonTable) -> str:
    out: list[str] = []
    if table.tasks:
        out += _md_table(*table_rows(table))
        out.append("")
    for qa in table.qa:
        out += render_qa_markdown(table, qa)
        out.append("")
    if table.generation is not None:
        methods = [r.method for r in table.rows]
        out += ["### Generation tasks (Table 1 shape)", ""]
        out += _md_table(*_generation_rows(table, methods))
        second = gen.secondary_rows(table.generation, methods)
        if second:
            out += ["", "Other metrics (test split):", ""] + _md_table(*second)
        out += [""] + [f"- {n}" for n in gen.notes(table.generation)] + [""]
    if table.mt_bench is not None:
        out += mtb.render_markdown(table.mt_bench, [r.method for r in table.rows], _md_table)
        if table.mt_bench.judges:
            out += ["Plot: `mt_bench.png` next to this report.", ""]
    if table.data_scaling is not None:
        out += [render_data_scaling_markdown(table.data_scaling), "Plot: `data_scaling.png` next to this report.", ""]
    if table.scaling is not None:
        out += ["### Parameter scaling: score against trainable parameters", "",
                render_scaling_markdown(table.scaling), "Plot: `scaling.png` next to this report.", ""]
    if table.significance is not None:
        out += ["### Significance against FFT", ""]
        out += _md_table(*sig.significance_rows(table.significance))
        out += [""] + [f"- {n}" for n in sig.notes(table.significance)]
        out += ["- Plots: `comparison.png` (each method's mean with its 95% interval, per task and split) and "
                "`pareto.png` (clean score against trainable parameters, peak memory and training time) next to "
                "this report.", ""]
    out += [f"- {note}" for note in table.notes]
    sel = selection_lines(table)
    if sel:
        out += ["", "Selected grid points:", *[f"- {s}" for s in sel]]
    return "\n".join(out) + "\n"


def _csv_memory(row: MethodRow, device_memory: bool) -> list[str]:
    cells = [f"{_mean(row.peak_rss_mb):.0f}"]
    if device_memory:
        means = _device_means(row)
        cells += [f"{means[0]:.0f}", f"{means[1]:.0f}"] if means else ["", ""]
    return cells


def render_csv(table: ComparisonTable) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["method", "task", "split", "mean", "std", "seeds", "lr", "warmup_ratio", "batch_size",
                     "trainable_params", "trainable_pct", "mean_train_seconds", "mean_peak_rss_mb"]
                    + (["mean_peak_device_allocated_mb", "mean_peak_device_reserved_mb"]
                       if table.device_memory else []))
    for row in table.rows:
        for task in table.tasks:
            cell = row.cells.get(task)
            if cell is None:
                continue
            for split, (mean, std) in (("orig", cell.orig), ("adv", cell.adv)):
                writer.writerow([row.method, task, split, f"{mean:.6f}", "" if math.isnan(std) else f"{std:.6f}",
                                 cell.seeds, cell.hp["lr"], cell.hp["warmup_ratio"], cell.hp["batch_size"],
                                 _count(row.trainable).replace(",", ""), _share(row),
                                 f"{_mean(row.train_seconds):.2f}", *_csv_memory(row, table.device_memory)])
    rows_by_method = {r.method: r for r in table.rows}
    for qa in table.qa:
        for method, cell in qa.rows.items():
            row = rows_by_method[method]
            for split, scores in cell.scores.items():
                for metric, (mean, std) in scores.items():
                    if math.isnan(mean):
                        continue
                    writer.writerow([method, qa.task, f"{split}:{metric}", f"{mean:.6f}",
                                     "" if math.isnan(std) else f"{std:.6f}", cell.seeds, cell.hp["lr"],
                                     cell.hp["warmup_ratio"], cell.hp["batch_size"],
                                     _count(row.trainable).replace(",", ""), _share(row),
                                     f"{_mean(row.train_seconds):.2f}", *_csv_memory(row, table.device_memory)])
    if table.generation is not None:
        for method, per_task in table.generation.scores.items():
            row = rows_by_method[method]
            for task, scores in per_task.items():
                for metric, (mean, std) in scores.items():
                    writer.writerow([method, task, f"test:{metric}", f"{mean:.6f}",
                                     "" if math.isnan(std) else f"{std:.6f}", table.generation.seeds[method], "", "",
                                     "", _count(row.trainable).replace(",", ""), _share(row),
                                     f"{_mean(row.train_seconds):.2f}", *_csv_memory(row, table.device_memory)])
    if table.mt_bench is not None:
        for judge in table.mt_bench.judges:
            name = "mt_bench:" + "/".join(str(p) for p in judge.identity if p)
            for method, scores in judge.scores.items():
                row = rows_by_method[method]
                for column, (mean, std) in scores.items():
                    writer.writerow([method, name, column, f"{mean:.6f}", "" if math.isnan(std) else f"{std:.6f}",
                                     judge.seeds[method], "", "", "", _count(row.trainable).replace(",", ""),
                                     _share(row), f"{_mean(row.train_seconds):.2f}",
                                     *_csv_memory(row, table.device_memory)])
    if table.data_scaling is not None:
        ds = table.data_scaling
        for (method, task, k), (mean, std) in ds.scores.items():
            writer.writerow([method, task, f"k={k}:accuracy", f"{mean:.6f}", "" if math.isnan(std) else f"{std:.6f}",
                             ds.seeds.get((method, k), ""), "", "", "", "", "", "", ""])
    if table.scaling is not None:
        for srow in table.scaling.rows:
            for column, (mean, std) in srow.scores.items():
                writer.writerow([srow.method, "scaling", column, f"{mean:.6f}", "" if math.isnan(std) else f"{std:.6f}",
                                 "", "", "", "", srow.trainable, "", "", ""])
    return buf.getvalue()


def _latex_escape(text: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"),
                 ("–", "--"), ("▲", r"$\uparrow$"), ("▼", r"$\downarrow$"), ("≈", r"$\approx$")):
        text = text.replace(a, b)
    return text


def _latex_table(header: list[str], body: list[list[str]], caption: str) -> list[str]:
    cols = "l" + "r" * (len(header) - 1)
    out = [r"\begin{table}[t]", r"\centering", r"\small", rf"\begin{{tabular}}{{{cols}}}", r"\toprule",
           " & ".join(_latex_escape(h) for h in header) + r" \\", r"\midrule"]
    out += [" & ".join(_latex_escape(c) for c in line) + r" \\" for line in body]
    return out + [r"\bottomrule", r"\end{tabular}", rf"\caption{{{caption}}}", r"\end{table}"]


def render_latex(table: ComparisonTable) -> str:
    out: list[str] = []
    if table.tasks:
        out += _render_latex_classification(table)
    for qa in table.qa:
        out += _latex_table(*qa_rows(table, qa), rf"{_display(qa.task)}: EM / F1 (\%), mean (std) over seeds; "
                            "adversarial sets scored by the worst case per source question.")
    if table.generation is not None:
        methods = [r.method for r in table.rows]
        out += _latex_table(*_generation_rows(table, methods),
                            r"Generation tasks (\%), mean (std) over seeds.")
    if table.mt_bench is not None:
        methods = [r.method for r in table.rows]
        for judge in table.mt_bench.judges:
            caption = f"MT-Bench scores (1--10), mean (std) over seeds; judge: {mtb.describe_judge(judge.identity)}."
            out += _latex_table(*mtb.judge_rows(judge, methods), caption)
    if table.scaling is not None:
        out += _latex_table(*scaling_rows(table.scaling), r"Score (\%) against trainable parameters.")
    return "\n".join(out) + "\n"


def _render_latex_classification(table: ComparisonTable) -> list[str]:
    return _latex_table(*table_rows(table),
                        r"Accuracy (\%), mean (std) over seeds, original and adversarial (AdvGLUE) sets.")


def render(table: ComparisonTable, fmt: str) -> str:
    return {"markdown": render_markdown, "csv": render_csv, "latex": render_latex}[fmt](table)
