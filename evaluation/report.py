"""The one-page report of one checkpoint's evaluation: a self-contained HTML page (images inlined)
and the same content as a PNG."""

from __future__ import annotations

import base64
import html
import time
from collections.abc import Mapping

from matplotlib.figure import Figure

from evaluation import plots
from evaluation.suite import Report, format_table


def figures(report: Report) -> dict[str, Figure]:
    """Every figure of one checkpoint by artifact file name: the report page, confusion, DOA polar,
    SELD per class."""
    out = {"report.png": plots.report_figure(title(report), format_table({"model": report}), report.results)}
    for result in report.results:
        if result.confusion:
            out[f"{result.task}_confusion.png"] = plots.confusion(result)
        if result.errors:
            out[f"{result.task}_polar.png"] = plots.doa_polar(result)
        if result.per_class:
            out[f"{result.task}_per_class.png"] = plots.per_class(result)
    return out


def title(report: Report) -> str:
    return f"AVSA evaluation — step {report.step} — {report.checkpoint}"


def page(report: Report, images: Mapping[str, bytes]) -> str:
    """HTML with the score table and every PNG of ``images`` (file name → bytes) embedded."""
    table = html.escape(format_table({"model": report}))
    pictures = "\n".join(
        f'<h2>{html.escape(name)}</h2><img alt="{html.escape(name)}" '
        f'src="data:image/png;base64,{base64.b64encode(data).decode()}">'
        for name, data in images.items()
        if name != "report.png"  # the page itself is the report; the PNG repeats it for image viewers
    )
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title(report))}</title></head><body style='font-family:sans-serif'>"
        f"<h1>{html.escape(title(report))}</h1>"
        f"<p>run {html.escape(str(report.run_id))}, evaluated {when} in {report.seconds:.0f} s. "
        "Accuracies in %, direction errors in degrees (great-circle); "
        "every baseline was computed in this same evaluation.</p>"
        f"<pre>{table}</pre>{pictures}</body></html>"
    )
