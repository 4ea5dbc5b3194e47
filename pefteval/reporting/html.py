"""One self-contained HTML page for a results directory: the comparison tables, every weight
analysis that has been computed (tables and figures), and the run metadata. Images are embedded
as data URIs and the style is inline, so the page opens offline and can be mailed as one file."""

from __future__ import annotations

import base64
import html
from pathlib import Path

import yaml
from markdown_it import MarkdownIt

from pefteval.analysis.results import ANALYSES

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 1200px;
       padding: 0 1rem; color: #1d1d1f; line-height: 1.45; }
h1 { font-size: 1.6rem; } h2 { font-size: 1.3rem; border-bottom: 1px solid #ddd; padding-bottom: .2rem;
margin-top: 2.2rem; } h3 { font-size: 1.05rem; }
table { border-collapse: collapse; margin: .6rem 0 1rem; font-size: .82rem; display: block; overflow-x: auto; }
th, td { border: 1px solid #d0d0d0; padding: .25rem .5rem; white-space: nowrap; }
th { background: #f3f3f3; } tr:nth-child(even) td { background: #fafafa; }
td:not(:first-child) { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; border: 1px solid #eee; margin: .5rem 0; }
pre { background: #f6f6f6; padding: .6rem; overflow-x: auto; font-size: .8rem; }
nav a { margin-right: 1rem; } .meta td { text-align: left; }
"""


def _markdown(text: str) -> str:
    return MarkdownIt("commonmark", {"html": False}).enable("table").render(text)


def _image(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"></figure>'


def _figures_for(name: str, folder: Path) -> list[Path]:
    pattern = {"increments": "increments_*.png", "spectrum": "spectrum.png", "intruders": "intruders.png",
               "forgetting": "forgetting.png", "similarity": "similarity.png"}.get(name)
    return sorted(folder.glob(pattern)) if pattern else []


def _metadata(out: Path, records: list[dict]) -> str:
    rows = []
    exp_path = out / "experiment.yaml"
    if records:
        first = records[0]
        cfg = first["config"]
        rows += [("Model", cfg["model"]), ("Trials (complete)", str(len(records))),
                 ("Tasks", ", ".join(dict.fromkeys(r["config"]["task"] for r in records))),
                 ("Methods", ", ".join(dict.fromkeys(r["config"]["method_label"] for r in records))),
                 ("Seeds", ", ".join(str(s) for s in sorted({r["config"]["seed"] for r in records}))),
                 ("Device", first.get("device", "?")),
                 ("Versions", ", ".join(f"{k} {v}" for k, v in sorted(first.get("versions", {}).items()))),
                 ("Total training time", f"{sum(r.get('train_seconds', 0) for r in records) / 60:.1f} min")]
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    page = f'<table class="meta">{body}</table>'
    if exp_path.is_file():
        page += ("<details><summary>Resolved experiment (experiment.yaml)</summary><pre>"
                 f"{html.escape(exp_path.read_text())}</pre></details>")
    return page


def render_html(out: Path, report_markdown: str, records: list[dict]) -> str:
    name = out.name
    exp_path = out / "experiment.yaml"
    if exp_path.is_file():
        name = (yaml.safe_load(exp_path.read_text()) or {}).get("name", name)
    figures = ("comparison.png", "pareto.png", "mt_bench.png", "scaling.png", "data_scaling.png")
    sections = [("comparison", "Comparison", _markdown(report_markdown) + "".join(
        _image(out / png, png) for png in figures if (out / png).is_file()))]
    folder = out / "analysis"
    for analysis in ANALYSES:
        md = folder / f"{analysis}.md"
        if md.is_file():
            figures = "".join(_image(p, p.name) for p in _figures_for(analysis, folder))
            text = md.read_text()
            title = analysis.capitalize()
            if text.startswith("## "):
                title, _, text = text[3:].partition("\n")
            sections.append((analysis, title, _markdown(text) + figures))
    sections.append(("metadata", "Run metadata", _metadata(out, records)))
    nav = "".join(f'<a href="#{key}">{html.escape(title)}</a>' for key, title, _ in sections)
    body = "".join(f'<section id="{key}"><h2>{html.escape(title)}</h2>{content}</section>'
                   for key, title, content in sections)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>pefteval: {html.escape(name)}</title><style>{STYLE}</style></head>"
            f"<body><h1>pefteval report: {html.escape(name)}</h1><nav>{nav}</nav>{body}"
            f"</body></html>\n")
