#!/usr/bin/env python3
"""Draws the panels of contrib/grafana-dashboard.json into one PNG, from
their own PromQL queries run against a Prometheus server (its HTTP API's
query_range), laid out on the dashboard's grid. Not Grafana: a picture of
what the dashboard's queries answer, for the README, where Grafana is not
at hand. Needs matplotlib (pip install matplotlib). Not run by CI.

    dashboard-png.py --prometheus http://127.0.0.1:9090 --minutes 10 --out dashboard.png
"""

import argparse
import json
import re
import time
import urllib.parse
import urllib.request
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

DASHBOARD = Path(__file__).with_name("grafana-dashboard.json")


def query_range(prometheus, expr, start, end, step):
    params = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    with urllib.request.urlopen(f"{prometheus}/api/v1/query_range?{params}", timeout=30) as r:
        answer = json.load(r)
    if answer.get("status") != "success":
        raise SystemExit(f"{expr}: {answer}")
    return answer["data"]["result"]


def legend(template, labels):
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), template or "")


def si(value, unit):
    """A tick label in the panel's unit, as Grafana writes it."""
    if unit == "percentunit":
        return f"{value * 100:.2g}%"
    suffix = {"bps": "b/s", "pps": "p/s", "s": "s"}.get(unit, "")
    if unit == "s" and 0 < abs(value) < 1:
        return f"{value * 1000:.3g} ms"
    for prefix, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {prefix}{suffix}"
    return f"{value:.3g} {suffix}".strip()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prometheus", default="http://127.0.0.1:9090")
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--rate-interval", default="15s", help="what $__rate_interval stands for")
    ap.add_argument("--top", default="10", help="the dashboard's $top")
    ap.add_argument("--end", type=float, default=None, help="Unix time of the right edge (default now)")
    ap.add_argument("--title", default=None)
    ap.add_argument("--out", default="dashboard.png")
    args = ap.parse_args()

    dashboard = json.loads(DASHBOARD.read_text())
    end = args.end or time.time()
    start = end - args.minutes * 60
    step = max(1, int(args.minutes * 60 / 240))
    panels = [p for p in dashboard["panels"] if p.get("type") == "timeseries"]
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)

    plt.style.use("dark_background")
    fig = plt.figure(figsize=(16, rows * 0.32), facecolor="#111217")
    # The dashboard's grid: 24 columns, `rows` rows; each panel in its
    # cell, less room for its title, its ticks and its axis label.
    left, right, top, bottom = 0.045, 0.008, 0.022, 0.045
    for panel in panels:
        g = panel["gridPos"]
        ax = fig.add_axes(
            [
                g["x"] / 24 + left,
                1 - (g["y"] + g["h"]) / rows + bottom * 9 / g["h"],
                g["w"] / 24 - left - right,
                g["h"] / rows - (top + bottom) * 9 / g["h"],
            ]
        )
        ax.set_facecolor("#181b1f")
        ax.set_title(panel["title"], loc="left", fontsize=10, color="#ccccdc")
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "none")
        drawn, quiet = 0, 0
        for target in panel.get("targets", []):
            expr = (
                target["expr"]
                .replace('=~"$instance"', '=~".*"')
                .replace("$__rate_interval", args.rate_interval)
                .replace("$top", args.top)
            )
            for series in query_range(args.prometheus, expr, start, end, step):
                xs = [(float(t) - end) / 60 for t, _ in series["values"]]
                ys = [float(v) for _, v in series["values"]]
                label = legend(target.get("legendFormat"), series["metric"])
                # Series that stay at 0 are drawn, but only counted in
                # the legend, which would otherwise hide the panel.
                if len(set(ys)) == 1 and ys[0] == 0 and unit != "none":
                    quiet += 1
                    label = "_nolegend_"
                ax.plot(xs, ys, linewidth=1.2, label=label)
                drawn += 1
        if drawn:
            handles, labels = ax.get_legend_handles_labels()
            if quiet:
                handles.append(plt.Line2D([], [], color="none"))
                labels.append(f"+{quiet} at 0")
            ax.legend(handles, labels, fontsize=7, loc="upper left", framealpha=0.5)
        else:
            ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", color="#888")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _, unit=unit: si(v, unit)))
        ax.set_xlim(-args.minutes, 0)
        ax.tick_params(labelsize=7, colors="#9fa0a8")
        ax.set_xlabel("minutes ago", fontsize=7, color="#9fa0a8", labelpad=1)
        ax.grid(color="#2c2f36", linewidth=0.5)
    if args.title:
        fig.suptitle(args.title, x=0.01, ha="left", fontsize=12, color="#ccccdc")
    fig.savefig(args.out, dpi=80, bbox_inches="tight", facecolor=fig.get_facecolor())
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
