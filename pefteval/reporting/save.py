"""Building a results directory's report and saving it beside the results (report.md, .csv, .tex or
.html, and the scaling figures): what `pefteval report`, `pefteval run` and ``pefteval.report``
share."""

from __future__ import annotations

from pathlib import Path

from pefteval.errors import OutputError, UserError
from pefteval.reporting.mt_bench import saved_judgments

REPORT_FORMATS = ("markdown", "csv", "latex", "html")


class UnsavedReport(OutputError):
    """The report was built but could not be saved; ``text`` holds it."""

    def __init__(self, message: str, text: str):
        super().__init__(message)
        self.text = text


def write_report(out: str | Path, fmt: str = "markdown", save: bool = True) -> str:
    """Build the report of ``out`` in ``fmt`` and, with ``save``, save it (report.md, .csv, .tex or
    .html, and the scaling figures); returns the text. A directory that cannot take the files
    (read-only, full) raises ``UnsavedReport``, which holds the text."""
    from pefteval.files import atomic_write_text
    from pefteval.reporting import build_table, render
    from pefteval.store import ResultStore
    from pefteval.tasks.user import check_known_tasks

    out = Path(out)
    if fmt not in REPORT_FORMATS:
        raise UserError(f"format {fmt!r}: choose one of {', '.join(REPORT_FORMATS)}")
    path = out / "results.sqlite"
    with ResultStore(path, read_only=True) as store:
        records = list(store.records())
        failed = sum(1 for _ in store.records("failed"))
    if not records:
        raise UserError(f"{path} holds no complete trials yet")
    check_known_tasks(records, out)  # a task of one's own needs its --include-path
    judgments, checks = saved_judgments(out)
    from pefteval.reporting.significance import scores_from

    scores_of = scores_from(out)
    table = build_table(records, failed, judgments, checks, scores_of)
    if fmt in ("markdown", "html"):
        from pefteval.reporting.claims import evaluate_claims, load_evidence, render_markdown

        # the claims read what the table has read (records, per-example scores, judgments)
        evidence = load_evidence(out, records, scores_of, judgments)
        markdown = render(table, "markdown") + "\n" + render_markdown(evaluate_claims([out], evidence=[evidence]),
                                                                       heading="### The paper's claims",
                                                                       sources=False)
        if fmt == "html":
            from pefteval.reporting.html import render_html

            text = render_html(out, markdown, records)
        else:
            text = markdown
    else:
        text = render(table, fmt)
    if not save:
        return text
    suffix = {"markdown": "md", "csv": "csv", "latex": "tex", "html": "html"}[fmt]
    try:
        atomic_write_text(out / f"report.{suffix}", text)
        if table.scaling is not None:
            from pefteval.reporting.scaling import plot_scaling

            plot_scaling(table.scaling, out / "scaling.png")
        if table.mt_bench is not None and table.mt_bench.judges:
            from pefteval.reporting.mt_bench import plot_categories

            plot_categories(table.mt_bench, [r.method for r in table.rows], out / "mt_bench.png")
        if table.data_scaling is not None:
            from pefteval.reporting.datascaling import plot_data_scaling

            plot_data_scaling(table.data_scaling, out / "data_scaling.png")
        if table.significance is not None:
            from pefteval.reporting.figures import COMPARISON_PNG, PARETO_PNG, plot_comparison, plot_pareto
            from pefteval.reporting.significance import render_csv

            atomic_write_text(out / "significance.csv", render_csv(table.significance))
            plot_comparison(table.significance, [r.method for r in table.rows], out / COMPARISON_PNG)
            plot_pareto(table, out / PARETO_PNG)
    except OutputError as err:
        raise UnsavedReport(str(err), text) from None
    return text
