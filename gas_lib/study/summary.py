"""The study's front page: ``reports/index.html`` and ``reports/summary.csv``.

One row per category with our metrics next to the GLASS paper's published numbers and the
nearest-neighbour baseline's (``baseline_metrics.json``, written by ``03_evaluation``; blank
when absent), the profile, backbone and timings, links to every notebook report, and, for a
category that failed, the failing step with links to its log and partial report. Run by
``run_all.sh``::

    python -m gas_lib.study.summary --reports reports --categories bracket_white metal_plate
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import os
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from .report import environment_info

# GLASS paper (ECCV 2024), MPDD, WideResNet-50 at 288 px: image / pixel AUROC in percent.
# AUPRO is published only as the mean over the six classes (MEAN_PAPER).
PAPER_MPDD: dict[str, dict[str, tuple[float, float]]] = {
    "bracket_black": {"GLASS-m": (99.7, 99.6), "SimpleNet": (94.2, 98.3), "PatchCore": (86.8, 98.1)},
    "bracket_brown": {"GLASS-m": (98.6, 98.4), "SimpleNet": (96.0, 96.6), "PatchCore": (95.1, 98.3)},
    "bracket_white": {"GLASS-m": (99.7, 99.2), "SimpleNet": (98.4, 99.6), "PatchCore": (88.6, 99.8)},
    "connector": {"GLASS-m": (100.0, 99.8), "SimpleNet": (100.0, 99.5), "PatchCore": (100.0, 99.5)},
    "metal_plate": {"GLASS-m": (100.0, 99.5), "SimpleNet": (100.0, 98.5), "PatchCore": (100.0, 98.6)},
    "tubes": {"GLASS-m": (99.4, 99.7), "SimpleNet": (99.7, 99.5), "PatchCore": (90.8, 98.8)},
}
# Mean over the six classes: image AUROC / pixel AUROC / PRO, percent.
MEAN_PAPER: dict[str, tuple[float, float, float]] = {
    "GLASS-m": (99.6, 99.4, 98.2), "SimpleNet": (98.1, 98.7, 95.7), "PatchCore": (93.5, 98.9, 95.0),
}
PAPER_SOURCE = ("GLASS paper (Chen et al., ECCV 2024, arXiv 2407.09359), MPDD table: "
                "WideResNet-50-2, 288 px, epoch chosen on the test set")

NOTEBOOKS = ("00_data_exploration", "01_training", "02_gas_ablation", "03_evaluation")
METRICS = ("image_auroc", "pixel_auroc", "aupro", "image_ap", "pixel_ap", "f1_max")
BASELINE_FILE = "baseline_metrics.json"
# the nearest-neighbour baseline's numbers in the row, from its baseline_metrics.json
BASELINE_COLUMNS = {"baseline_image_auroc": "image_auroc", "baseline_pixel_auroc": "pixel_auroc",
                    "baseline_aupro": "aupro", "baseline_fit_seconds": "train_seconds"}
FAILED_MARKER = "FAILED"
LOG_NAME = "run.log"
COLUMNS = ["category", "status", "failed_step", "error", *METRICS,
           "paper_glass_image_auroc", "paper_glass_pixel_auroc", *BASELINE_COLUMNS,
           "profile", "backbone",
           "synthesis", "variant", "image_size", "epochs", "selection", "train_seconds", "feature_seconds",
           "eval_seconds", "images_per_second", "device", "git_commit", "reports", "log"]


def paper_numbers(category: str, method: str = "GLASS-m") -> dict[str, float | None]:
    """Published image/pixel AUROC of ``method`` for an MPDD class as fractions (None if absent)."""
    values = PAPER_MPDD.get(category, {}).get(method)
    if values is None:
        return {"image_auroc": None, "pixel_auroc": None}
    return {"image_auroc": values[0] / 100, "pixel_auroc": values[1] / 100}


# --- one category -----------------------------------------------------------------------------
def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _reports(folder: Path) -> list[str]:
    """The category's HTML reports in notebook order, as paths relative to the reports root."""
    pages = sorted(folder.glob("*.html"))
    return [f"{folder.name}/{p.name}" for p in pages]


def category_row(reports_dir: str | Path, category: str, profile: str | None = None
                 ) -> dict[str, Any]:
    """Status, metrics and links of one category from ``reports/<category>``."""
    folder = Path(reports_dir) / category
    metrics = _read_json(folder / "metrics.json")
    baseline = _read_json(folder / BASELINE_FILE)
    failed = folder / FAILED_MARKER
    row: dict[str, Any] = {c: None for c in COLUMNS}
    row.update(category=category, profile=profile, reports=_reports(folder),
               log=f"{category}/{LOG_NAME}" if (folder / LOG_NAME).is_file() else None)
    paper = paper_numbers(category)
    row["paper_glass_image_auroc"] = paper["image_auroc"]
    row["paper_glass_pixel_auroc"] = paper["pixel_auroc"]
    if failed.is_file():
        lines = failed.read_text(errors="replace").strip().splitlines() or ["unknown"]
        row.update(status="failed", failed_step=lines[0].strip(),
                   error=" ".join(line.strip() for line in lines[1:]) or None)
    elif metrics is not None:
        row["status"] = "ok"
    else:
        row["status"] = "not run" if not folder.is_dir() else "incomplete"
    if isinstance(baseline, dict):
        row.update({column: _number(baseline.get(key))
                    for column, key in BASELINE_COLUMNS.items()})
    if metrics is not None:
        config = metrics.get("config") or {}
        env = metrics.get("environment") or {}
        row.update({k: metrics.get(k) for k in METRICS})
        row.update(profile=metrics.get("profile", profile), backbone=metrics.get("backbone"),
                   synthesis=("knn baseline" if metrics.get("method") == "knn" else
                              metrics.get("synthesis") or config.get("synthesis", "gas")),
                   variant=metrics.get("variant") or config.get("variant"),
                   image_size=config.get("image_size"), epochs=config.get("epochs"),
                   selection=metrics.get("selection_label") or metrics.get("selection"),
                   train_seconds=metrics.get("train_seconds"),
                   feature_seconds=metrics.get("feature_seconds"),
                   eval_seconds=metrics.get("eval_seconds"),
                   images_per_second=metrics.get("images_per_second"),
                   device=env.get("device"), git_commit=env.get("git_commit"))
    return row


def _number(value: Any) -> float | None:
    """A float from a JSON value, ``None`` for anything else (a blank cell, never a crash)."""
    try:
        return None if value is None or isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        return None


def discover_categories(reports_dir: str | Path) -> list[str]:
    root = Path(reports_dir)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
                  and any((p / name).exists() for name in ("metrics.json", FAILED_MARKER, LOG_NAME)))


def build_summary(reports_dir: str | Path, categories: list[str] | None = None, *,
                  profile: str | None = None, data_root: str | None = None,
                  write: bool = True) -> pd.DataFrame:
    """The summary table; with ``write`` also ``summary.csv`` and ``index.html`` in reports_dir."""
    reports_dir = Path(reports_dir)
    categories = list(categories) if categories else discover_categories(reports_dir)
    frame = pd.DataFrame([category_row(reports_dir, c, profile) for c in categories],
                         columns=COLUMNS)
    for column in ("image_size", "epochs"):  # whole numbers, blank for a failed row
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("Int64")
    if write:
        reports_dir.mkdir(parents=True, exist_ok=True)
        csv = frame.copy()
        csv["reports"] = csv["reports"].map(lambda links: ";".join(links or []))
        _atomic_write(reports_dir / "summary.csv", csv.to_csv(index=False))
        page = render_html(frame, environment_info(), profile=profile, data_root=data_root)
        _atomic_write(reports_dir / "index.html", page)
    return frame


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# --- HTML -------------------------------------------------------------------------------------
_CSS = """
body { font-family: system-ui, -apple-system, Segoe UI, Roboto, sans-serif; margin: 2rem auto;
       max-width: 1360px; padding: 0 1rem; color: #222; line-height: 1.45; }
h1 { margin-bottom: 0.2rem; } h2 { margin-top: 2rem; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.6rem 0; font-size: 0.92rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.45rem; text-align: right; vertical-align: top; }
th { background: #f3f3f3; } td.l, th.l { text-align: left; }
tr.failed td { background: #fdecea; } tr.ok td.status { color: #1a7f37; font-weight: 600; }
tr.failed td.status { color: #b42318; font-weight: 600; }
td.knn { color: #555; font-style: italic; } td.knn.ahead { background: #fff4d6; font-weight: 600; }
.muted { color: #666; font-size: 0.88rem; } code { background: #f5f5f5; padding: 0 0.2rem; }
img { max-width: 100%; } .wide { overflow-x: auto; }
"""


def _pct(value: Any) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "&ndash;"
    return f"{100 * float(value):.1f}"


def _seconds(value: Any) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "&ndash;"
    value = float(value)
    return f"{value:.0f} s" if value < 120 else f"{value / 60:.1f} min"


REPORT_LABELS = {"00_data_exploration": "data", "01_training": "training",
                 "02_gas_ablation": "ablation", "03_evaluation": "evaluation"}


def _links(row: dict[str, Any]) -> str:
    parts = []
    for link in row.get("reports") or []:
        name = Path(link).stem
        partial = row.get("status") == "failed" and name == row.get("failed_step")
        label = html.escape(REPORT_LABELS.get(name, name) + (" (partial)" if partial else ""))
        parts.append(f'<a href="{html.escape(link)}">{label}</a>')
    if row.get("log"):
        parts.append(f'<a href="{html.escape(row["log"])}">log</a>')
    return "<br>".join(parts) or "&ndash;"


def _status_cell(row: dict[str, Any]) -> str:
    status = html.escape(str(row.get("status")))
    if row.get("status") != "failed":
        return status
    step = html.escape(str(row.get("failed_step") or "?"))
    error = html.escape(str(row.get("error") or ""))
    return f"{status}<div class='muted'>in {step}</div><div class='muted'>{error}</div>"


def _knn_cell(ours: Any, baseline: Any) -> str:
    """The baseline's value, highlighted when it beats ours (GAS did not earn its training)."""
    ahead = _number(baseline) is not None and _number(ours) is not None \
        and _number(baseline) > _number(ours)
    return f"<td class='knn{' ahead' if ahead else ''}'>{_pct(baseline)}</td>"


def _table(frame: pd.DataFrame) -> str:
    head = ("<tr><th class='l'>category</th><th class='l'>status</th>"
            "<th>I-AUROC</th><th>k-NN</th><th>paper</th><th>P-AUROC</th><th>k-NN</th>"
            "<th>paper</th><th>AUPRO</th><th>k-NN</th>"
            "<th>image AP</th><th>pixel AP</th><th>F1-max</th><th class='l'>profile / backbone / "
            "synthesis</th>"
            "<th>image size</th><th>epochs</th><th>train</th><th>k-NN fit</th><th>inference</th>"
            "<th class='l'>reports</th></tr>")
    body = []
    for row in frame.to_dict("records"):
        cls = "failed" if row["status"] == "failed" else ("ok" if row["status"] == "ok" else "")
        infer = _seconds(row["eval_seconds"])
        if row.get("images_per_second"):
            infer += f"<div class='muted'>{float(row['images_per_second']):.1f} img/s</div>"
        profile = html.escape(f"{row['profile'] or '?'} / {row['backbone'] or '?'}")
        if row.get("synthesis"):
            profile += html.escape(f" / {row['synthesis']}") + (
                f"<div class='muted'>{html.escape(str(row['variant']))}</div>"
                if row.get("variant") else "")
        body.append(
            f"<tr class='{cls}'><td class='l'>{html.escape(row['category'])}</td>"
            f"<td class='l status'>{_status_cell(row)}</td>"
            f"<td>{_pct(row['image_auroc'])}</td>"
            f"{_knn_cell(row['image_auroc'], row['baseline_image_auroc'])}"
            f"<td class='muted'>{_pct(row['paper_glass_image_auroc'])}</td>"
            f"<td>{_pct(row['pixel_auroc'])}</td>"
            f"{_knn_cell(row['pixel_auroc'], row['baseline_pixel_auroc'])}"
            f"<td class='muted'>{_pct(row['paper_glass_pixel_auroc'])}</td>"
            f"<td>{_pct(row['aupro'])}</td>{_knn_cell(row['aupro'], row['baseline_aupro'])}"
            f"<td>{_pct(row['image_ap'])}</td><td>{_pct(row['pixel_ap'])}</td>"
            f"<td>{_pct(row['f1_max'])}</td><td class='l'>{profile}</td>"
            f"<td>{row['image_size'] or '&ndash;'}</td><td>{row['epochs'] or '&ndash;'}</td>"
            f"<td>{_seconds(row['train_seconds'])}</td>"
            f"<td class='knn'>{_seconds(row['baseline_fit_seconds'])}</td><td>{infer}</td>"
            f"<td class='l'>{_links(row)}</td></tr>")
    ok = frame[frame["status"] == "ok"]
    if len(ok) > 1:
        means = {m: pd.to_numeric(ok[m], errors="coerce").mean() for m in METRICS}
        paper_i = pd.to_numeric(ok["paper_glass_image_auroc"], errors="coerce").mean()
        paper_p = pd.to_numeric(ok["paper_glass_pixel_auroc"], errors="coerce").mean()
        # the baseline's mean only over the same categories as ours: every ok row has one
        base = {m: pd.to_numeric(ok[f"baseline_{m}"], errors="coerce")
                for m in ("image_auroc", "pixel_auroc", "aupro")}
        base = {m: (v.mean() if v.notna().all() else None) for m, v in base.items()}
        body.append(
            f"<tr><td class='l'><b>mean ({len(ok)} ok)</b></td><td></td>"
            f"<td><b>{_pct(means['image_auroc'])}</b></td>"
            f"{_knn_cell(means['image_auroc'], base['image_auroc'])}"
            f"<td class='muted'>{_pct(paper_i)}</td>"
            f"<td><b>{_pct(means['pixel_auroc'])}</b></td>"
            f"{_knn_cell(means['pixel_auroc'], base['pixel_auroc'])}"
            f"<td class='muted'>{_pct(paper_p)}</td>"
            f"<td><b>{_pct(means['aupro'])}</b></td>{_knn_cell(means['aupro'], base['aupro'])}"
            f"<td>{_pct(means['image_ap'])}</td>"
            f"<td>{_pct(means['pixel_ap'])}</td><td>{_pct(means['f1_max'])}</td>"
            "<td colspan='7'></td></tr>")
    return f"<div class='wide'><table>{head}{''.join(body)}</table></div>"


def _figure(frame: pd.DataFrame) -> str:
    """Ours vs the paper per category as an embedded PNG ('' when nothing succeeded)."""
    ok = frame[frame["status"] == "ok"]
    if ok.empty:
        return ""
    from matplotlib.figure import Figure

    rows = []
    for row in ok.to_dict("records"):
        for metric, paper_key, label in (("image_auroc", "paper_glass_image_auroc", "image AUROC"),
                                         ("pixel_auroc", "paper_glass_pixel_auroc", "pixel AUROC")):
            rows.append(dict(category=row["category"], metric=label, source="ours",
                             value=row[metric]))
            if row[paper_key] is not None:
                rows.append(dict(category=row["category"], metric=label, source="GLASS-m paper",
                                 value=row[paper_key]))
            if _number(row.get(f"baseline_{metric}")) is not None:
                rows.append(dict(category=row["category"], metric=label, source="k-NN baseline",
                                 value=row[f"baseline_{metric}"]))
    long = pd.DataFrame(rows).dropna(subset=["value"])
    if long.empty:
        return ""
    import seaborn as sns

    fig = Figure(figsize=(max(6.0, 2.4 * ok.shape[0] + 2), 3.6), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    for ax, metric in zip(axes, ("image AUROC", "pixel AUROC")):
        part = long[long["metric"] == metric]
        if part.empty:
            continue
        sns.barplot(data=part, x="category", y="value", hue="source", ax=ax,
                    palette={"ours": "tab:blue", "GLASS-m paper": "0.7",
                             "k-NN baseline": "tab:orange"},
                    hue_order=[h for h in ("ours", "k-NN baseline", "GLASS-m paper")
                               if h in set(part["source"])])
        low = max(0.0, float(part["value"].min()) - 0.05)
        ax.set(ylim=(low, 1.006), xlabel="", ylabel="")
        ax.set_title(metric, pad=10)
        for container in ax.containers:
            ax.bar_label(container, fmt="%.3f", fontsize="x-small", padding=1)
        ax.legend(fontsize="small", loc="lower right")
        ax.grid(axis="y", alpha=0.3)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    data = base64.b64encode(buffer.getvalue()).decode()
    return f"<img alt='ours vs paper' src='data:image/png;base64,{data}'>"


def render_html(frame: pd.DataFrame, environment: dict[str, Any], *, profile: str | None = None,
                data_root: str | None = None) -> str:
    """The self-contained front page (inline CSS and images, relative links)."""
    n_failed = int((frame["status"] == "failed").sum())
    n_ok = int((frame["status"] == "ok").sum())
    env_rows = "".join(f"<tr><td class='l'>{html.escape(str(k))}</td>"
                       f"<td class='l'><code>{html.escape(str(v))}</code></td></tr>"
                       for k, v in environment.items())
    devices = sorted({str(d) for d in frame["device"].dropna()})
    paper_mean = MEAN_PAPER["GLASS-m"]
    settings = []
    if profile:
        settings.append(f"profile requested: <code>{html.escape(profile)}</code>")
    if data_root:
        settings.append(f"data root: <code>{html.escape(str(data_root))}</code>")
    if devices:
        settings.append(f"trained on: <code>{html.escape(', '.join(devices))}</code>")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>GAS on MPDD: study summary</title>
<style>{_CSS}</style></head><body>
<h1>GAS (GLASS) on MPDD: study summary</h1>
<p class="muted">{' &middot; '.join(settings)}</p>
<p>{n_ok} of {len(frame)} categories finished{f", <b>{n_failed} failed</b>" if n_failed else ""}.
Each category was run through the four notebooks (data exploration, training, GAS ablation,
evaluation); the links open their HTML reports. Metrics are percentages on the category's test
split, with the epoch chosen honestly (see each report's <i>selection</i>); the grey
<i>paper</i> columns are the GLASS-m numbers published for the same class. The italic
<i>k-NN</i> columns are the nearest-neighbour baseline (PatchCore-style coreset memory bank on
the same backbone features, no training), fitted and evaluated in the evaluation notebook;
a highlighted one beats GAS.</p>
{_table(frame)}
<p class="muted">Paper: {html.escape(PAPER_SOURCE)}. Its mean over the six MPDD classes is
{paper_mean[0]} I-AUROC / {paper_mean[1]} P-AUROC / {paper_mean[2]} PRO; per-class PRO is not
published. The paper picked each class's epoch on the test set, which flatters its numbers.
Train time is the training epochs (GAS, plus LAS when the profile uses it; backbone features,
the LAS pool and monitoring excluded); k-NN fit is the baseline's coreset selection (its
backbone features excluded likewise); inference is
the whole test split end to end (reading, backbone, heads, maps).</p>
{_figure(frame)}
<h2>Environment</h2>
<table>{env_rows}</table>
<p class="muted">Recorded when this page was built; each category's <code>metrics.json</code>
holds the environment of its own run.</p>
</body></html>
"""


# --- command line -----------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gas_lib.study.summary", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reports", default="reports", help="the reports folder")
    parser.add_argument("--categories", nargs="*", help="rows to show (default: every folder)")
    parser.add_argument("--profile", help="the profile that was requested (for failed rows)")
    parser.add_argument("--data-root", help="shown on the page")
    args = parser.parse_args(argv)
    frame = build_summary(args.reports, args.categories, profile=args.profile,
                          data_root=args.data_root)
    shown = frame[["category", "status", "image_auroc", "pixel_auroc", "aupro"]]
    print(shown.to_string(index=False))
    print(f"wrote {Path(args.reports) / 'index.html'} and {Path(args.reports) / 'summary.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
