"""One self-contained HTML page with the evaluation tables and pictures.

Images are embedded as base64 ``data:`` URIs and the style is inline, so the
page can be mailed or archived as a single file and opens offline.
"""

from __future__ import annotations

import base64
import html
import json
import os
from collections.abc import Mapping
from pathlib import Path

from nnn_cli.data.outputs import atomic_output

METHOD_LABELS = {
    "baseline": "Baseline",
    "nnn": "NNN",
    "dn": "DN",
    "qbnorm": "QB-Norm (DIS)",
    "is": "Inverted softmax",
    "dbnorm": "DBNorm (DualIS)",
    "dbnorm_dis": "DBNorm (DualDIS)",
}

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1000px;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.6em 0}th,td{border:1px solid #ccc;padding:.3em .7em;text-align:right}
th:first-child,td:first-child{text-align:left}th{background:#f3f3f3}
.note{background:#fff8e1;border-left:4px solid #f0b400;padding:.4em .8em}.ci{color:#777;font-size:.85em;white-space:nowrap}td{white-space:nowrap}.meta{color:#555;font-size:.9em}figure{margin:1em 0}
figcaption{color:#555;font-size:.9em}img{max-width:100%;border:1px solid #eee}
"""


def _fmt(value, digits: int = 2) -> str:
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return html.escape(str(value))


def _methods_table(result: Mapping) -> str:
    from nnn_cli.report.plots import label_decimals

    methods = [m for m in METHOD_LABELS if isinstance(result.get(m), Mapping)]
    ks = ("R@1", "R@5", "R@10")
    # as many decimals as the numbers need to stay distinct (82.55 vs 82.45), at least 2
    digits = label_decimals([result[m][k] for m in methods for k in ks if k in result[m]], min_digits=2)
    gain = any("R@1_gain" in result[m] for m in methods)
    head = (
        "".join(f"<th>{k}</th>" for k in ks)
        + ("<th>R@1 gain (95%)</th>" if gain else "")
        + "<th>seconds</th><th>parameters</th>"
    )
    rows = []
    for m in methods:
        r = result[m]
        cells = []
        for k in ks:
            ci = r.get(f"{k}_ci")
            text = _fmt(float(r[k]), digits)
            if ci:
                text += f' <span class="ci">[{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]</span>'
            cells.append(f"<td>{text}</td>")
        if gain:
            g, gci = r.get("R@1_gain"), r.get("R@1_gain_ci")
            text = "" if g is None else f"{g:+.{digits}f}"
            if gci:
                text += f' <span class="ci">[{gci[0]:+.{digits}f}, {gci[1]:+.{digits}f}]</span>'
            cells.append(f"<td>{text}</td>")
        params = r.get("params") or (
            {"alpha": result["params"].get("alpha"), "k": result["params"].get("k")}
            if m == "nnn" and result.get("params")
            else {}
        )
        ptext = ", ".join(f"{html.escape(str(a))}={html.escape(str(b))}" for a, b in params.items())
        cells.append(f"<td>{_fmt(float(r.get('seconds', 0.0)), 3)}</td><td>{ptext}</td>")
        rows.append(f"<tr><td>{html.escape(METHOD_LABELS[m])}</td>{''.join(cells)}</tr>")
    return f'<table id="recall"><thead><tr><th>method</th>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _hubness_table(result: Mapping) -> str:
    methods = [m for m in METHOD_LABELS if isinstance(result.get(m), Mapping) and "hubness" in result[m]]
    keys = (
        ("max", "max"),
        ("skewness", "skewness"),
        ("kurtosis", "kurtosis"),
        ("mae", "MAE"),
        ("never_retrieved", "never retrieved (share)"),
    )
    head = "".join(f"<th>{html.escape(METHOD_LABELS[m])}</th>" for m in methods)
    rows = []
    for key, label in keys:
        cells = "".join(f"<td>{_fmt(result[m]['hubness'][key], 3)}</td>" for m in methods)
        rows.append(f"<tr><td>{label}</td>{cells}</tr>")
    return f'<table id="hubness"><thead><tr><th>rank-1 hubness</th>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _image(path: str | Path, caption: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return (
        f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def render_report(
    result: Mapping,
    images: Mapping[str, str | Path] | None = None,
    title: str = "NNN evaluation report",
    note: str | None = None,
) -> str:
    """The HTML text: run facts, recall table (with 95% intervals), hubness table, pictures, raw JSON.

    ``note`` (e.g. :data:`nnn_cli.report.pictures.PICTURES_MISSING`) is shown as one line where the
    pictures would be: a tables-only page.
    """
    meta = [
        f"{result.get('n_queries_with_truth', result.get('n_queries', '?'))} queries with ground truth",
        f"{result.get('n_gallery', '?')} gallery items",
        f"metric {result.get('metric', '?')}",
    ]
    if result.get("gallery_bank"):
        meta.append(f"gallery bank: {result['gallery_bank']}")
    if result.get("bootstrap"):
        meta.append(f"95% bootstrap intervals from {result['bootstrap']} resamples of the queries")
    parts = [
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="meta">{html.escape("; ".join(meta))}</p>',
        "<h2>Retrieval accuracy (percent) and time</h2>",
        _methods_table(result),
        "<h2>Hubness</h2>",
        _hubness_table(result),
    ]
    if images or note:
        parts.append("<h2>Pictures</h2>")
    if note:
        parts.append(f'<p class="note" id="note">{html.escape(note)}</p>')
    if images:
        parts += [_image(p, caption) for caption, p in images.items()]
    parts.append(
        "<h2>Raw results</h2><details><summary>JSON</summary><pre>"
        + html.escape(json.dumps(result, indent=2))
        + "</pre></details>"
    )
    body = "\n".join(parts)
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_STYLE}</style></head><body>{body}</body></html>\n"
    )


def write_report(
    path: str | os.PathLike,
    result: Mapping,
    images: Mapping[str, str | Path] | None = None,
    title: str = "NNN evaluation report",
    note: str | None = None,
) -> Path:
    """Write :func:`render_report`'s page atomically to ``path``."""
    path = Path(path)
    text = render_report(result, images, title, note)
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path
