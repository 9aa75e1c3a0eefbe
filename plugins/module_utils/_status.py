# -*- coding: utf-8 -*-
# Copyright: hepinfra.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The site's status report: figures from the scaling history, the workers, the last backups and
the image x cloud matrix, as one self-contained HTML page (inline SVG plots, no script, no
external file) and a text summary. Pure Python over plain data.

Private to this collection: the API may change between releases.
"""

from __future__ import annotations

import datetime
import html
import json
from typing import Any, Iterable

STATES = ("starting", "idle", "busy", "draining", "error")


def read_history(lines: Iterable[str], since: float | None = None) -> tuple[list[dict[str, Any]], int]:
    """The cycles of a scaling history file (JSON lines) at or after ``since`` (epoch), oldest first,
    and how many lines could not be read (a line cut short by a crash is skipped, not fatal)."""
    cycles, bad = [], 0
    for line in lines:
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            epoch = float(entry["epoch"])
        except (ValueError, KeyError, TypeError):
            bad += 1
            continue
        if since is None or epoch >= since:
            cycles.append(entry)
    cycles.sort(key=lambda entry: entry["epoch"])
    return cycles, bad


def figures(cycles: list[dict[str, Any]], workers: list[dict[str, Any]] | None, backups: dict[str, Any] | None,
            matrix: dict[str, dict[str, Any]] | None) -> dict[str, Any]:
    """The numbers the page and the text show."""
    last = cycles[-1] if cycles else {}
    if workers is not None:
        per_cloud: dict[str, dict[str, int]] = {}
        for worker in workers:
            state = {"unregistered": "starting"}.get(worker.get("pool_state"), worker.get("pool_state") or "starting")
            cloud = per_cloud.setdefault(worker.get("cloud", "?"), {})
            cloud[state] = cloud.get(state, 0) + 1
        worker_source = "worker_info"
    else:
        per_cloud = {cloud: dict(states) for cloud, states in (last.get("workers") or {}).items()}
        worker_source = "last scaling cycle"
    launched = sum(n for entry in cycles for per in (entry.get("launched") or {}).values() for n in per.values())
    out: dict[str, Any] = {
        "cycles": len(cycles),
        "last_cycle": last.get("time"),
        "jobs": last.get("jobs") or {},
        "workers": per_cloud,
        "workers_from": worker_source,
        "launched": launched,
        "drained": sum(int(entry.get("drained") or 0) for entry in cycles),
        "deleted": sum(int(entry.get("deleted") or 0) for entry in cycles),
        "cycle_errors": sum(int(entry.get("errors") or 0) for entry in cycles),
        "shortfall": last.get("shortfall") or {},
        "unfit": last.get("unfit") or {},
    }
    if backups:
        hosts = backups.get("hosts") or {}
        domains = [dict(domain, host=host) for host, report in hosts.items() for domain in (report.get("domains") or [])]
        out["backups"] = {
            "finished": backups.get("finished"),
            "hosts": len(hosts),
            "hosts_failed": sorted(host for host, report in hosts.items() if report.get("failed")),
            "domains": len(domains),
            "domains_failed": sorted("%s/%s" % (d["host"], d.get("name")) for d in domains if d.get("state") == "failed"
                                     or d.get("error")),
            "list": domains,
        }
    if matrix:
        clouds = sorted({cloud for per in matrix.values() for cloud in per})
        missing = sorted("%s@%s" % (image, cloud) for image, per in matrix.items() for cloud in clouds if not per.get(cloud))
        out["images"] = {"images": sorted(matrix), "clouds": clouds, "missing": missing, "matrix": matrix}
    return out


# -- plots ---------------------------------------------------------------------------------------

def _series(cycles: list[dict[str, Any]]) -> dict[str, list[tuple[float, float]]]:
    series: dict[str, list[tuple[float, float]]] = {"idle jobs": [], "running jobs": [], "workers": []}
    for entry in cycles:
        epoch = float(entry["epoch"])
        jobs = entry.get("jobs") or {}
        series["idle jobs"].append((epoch, sum(int(g.get("idle") or 0) for g in jobs.values())))
        series["running jobs"].append((epoch, sum(int(g.get("running") or 0) for g in jobs.values())))
        series["workers"].append((epoch, sum(int(n) for states in (entry.get("workers") or {}).values()
                                             for n in states.values())))
    return series


COLOURS = {"idle jobs": "#d95f02", "running jobs": "#1b9e77", "workers": "#7570b3", "launched": "#1f78b4",
           "retired": "#e7298a"}


def _time(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime("%H:%M")


def _axis(x1: float, y1: float, x2: float, y2: float) -> str:
    return '<line x1="%d" y1="%d" x2="%d" y2="%d" class="axis"/>' % (x1, y1, x2, y2)


def _tick(x: float, y: float, text: str, anchor: str) -> str:
    return '<text x="%.1f" y="%.1f" class="tick" text-anchor="%s">%s</text>' % (x, y, anchor, html.escape(text))


def line_plot(title: str, series: dict[str, list[tuple[float, float]]], ident: str) -> str:
    """An SVG line plot of several series over time (UTC), with axes, ticks and a legend."""
    width, height, left, right, top, bottom = 720, 260, 56, 150, 28, 36
    points = [p for values in series.values() for p in values]
    if not points:
        return '<p class="empty" id="%s">No scaling cycles in this window.</p>' % ident
    t0, t1 = min(p[0] for p in points), max(p[0] for p in points)
    ymax = max(max(p[1] for p in points), 1)
    span = (t1 - t0) or 1.0

    def x(t: float) -> float:
        return left + (t - t0) / span * (width - left - right)

    def y(v: float) -> float:
        return top + (1 - v / ymax) * (height - top - bottom)

    parts = ['<svg id="%s" class="plot" role="img" aria-label="%s" viewBox="0 0 %d %d" width="%d" height="%d">'
             % (ident, html.escape(title), width, height, width, height),
             '<text x="%d" y="18" class="title">%s</text>' % (left, html.escape(title)),
             _axis(left, top, left, height - bottom),
             _axis(left, height - bottom, width - right, height - bottom)]
    for tick in range(5):
        value = ymax * tick / 4
        parts.append(_tick(left - 6, y(value) + 4, "%g" % round(value, 1), "end"))
    for tick in range(5):
        t = t0 + span * tick / 4
        parts.append(_tick(x(t), height - bottom + 16, _time(t), "middle"))
    for index, (name, values) in enumerate(series.items()):
        colour = COLOURS.get(name, "#333")
        path = " ".join("%s%.1f,%.1f" % ("M" if i == 0 else "L", x(t), y(v)) for i, (t, v) in enumerate(values))
        parts.append('<path d="%s" fill="none" stroke="%s" stroke-width="2" data-series="%s"/>'
                     % (path, colour, html.escape(name)))
        ly = top + 14 + index * 18
        parts.append('<rect x="%d" y="%d" width="12" height="4" fill="%s"/>' % (width - right + 12, ly - 4, colour))
        parts.append('<text x="%d" y="%d" class="legend">%s (last %g)</text>'
                     % (width - right + 30, ly, html.escape(name), values[-1][1] if values else 0))
    parts.append("</svg>")
    return "".join(parts)


def bar_plot(title: str, cycles: list[dict[str, Any]], ident: str, buckets: int = 24) -> str:
    """Launches and retirements (drained or deleted without drain counts once per worker: deleted) per
    time bucket, as paired bars."""
    if not cycles:
        return '<p class="empty" id="%s">No scaling cycles in this window.</p>' % ident
    t0, t1 = float(cycles[0]["epoch"]), float(cycles[-1]["epoch"])
    span = (t1 - t0) or 1.0
    count = min(buckets, max(len(cycles), 1))
    launched, retired = [0] * count, [0] * count
    for entry in cycles:
        index = min(int((float(entry["epoch"]) - t0) / span * count), count - 1)
        launched[index] += sum(n for per in (entry.get("launched") or {}).values() for n in per.values())
        retired[index] += int(entry.get("deleted") or 0)
    width, height, left, right, top, bottom = 720, 220, 56, 150, 28, 36
    ymax = max(*launched, *retired, 1)
    slot = (width - left - right) / count
    parts = ['<svg id="%s" class="plot" role="img" aria-label="%s" viewBox="0 0 %d %d" width="%d" height="%d">'
             % (ident, html.escape(title), width, height, width, height),
             '<text x="%d" y="18" class="title">%s</text>' % (left, html.escape(title)),
             _axis(left, height - bottom, width - right, height - bottom)]
    for tick in range(3):
        value = ymax * tick / 2
        ypos = top + (1 - value / ymax) * (height - top - bottom)
        parts.append(_tick(left - 6, ypos + 4, "%g" % round(value, 1), "end"))
    for index in range(count):
        for offset, values, name in ((0.1, launched, "launched"), (0.5, retired, "retired")):
            tall = values[index] / ymax * (height - top - bottom)
            parts.append('<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s" data-%s="%d"/>'
                         % (left + slot * (index + offset), height - bottom - tall, slot * 0.4, tall, COLOURS[name],
                            name, values[index]))
    parts.append('<text x="%d" y="%d" class="tick">%s</text>' % (left, height - bottom + 16, _time(t0)))
    parts.append('<text x="%d" y="%d" class="tick" text-anchor="end">%s</text>' % (width - right, height - bottom + 16,
                                                                                   _time(t1)))
    for index, name in enumerate(("launched", "retired")):
        ly = top + 14 + index * 18
        parts.append('<rect x="%d" y="%d" width="12" height="8" fill="%s"/>' % (width - right + 12, ly - 8, COLOURS[name]))
        parts.append('<text x="%d" y="%d" class="legend">%s (%d)</text>'
                     % (width - right + 30, ly, name, sum(launched if name == "launched" else retired)))
    parts.append("</svg>")
    return "".join(parts)


# -- the page and the text -------------------------------------------------------------------------

STYLE = """body{font-family:sans-serif;margin:2em;color:#222}h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th:first-child,td:first-child{text-align:left}.bad{color:#b00020;font-weight:bold}.ok{color:#1b7e3c}
.plot .axis{stroke:#444}.plot .tick,.plot .legend{font-size:11px;fill:#333}.plot .title{font-size:13px;font-weight:bold}
.empty{color:#666}"""


def _cell(value: Any, figure: str | None = None, css: str = "") -> str:
    attributes = (' data-figure="%s"' % html.escape(figure)) if figure else ""
    if css:
        attributes += ' class="%s"' % css
    return "<td%s>%s</td>" % (attributes, html.escape(str(value)))


def render_html(title: str, generated: str, data: dict[str, Any], cycles: list[dict[str, Any]]) -> str:
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           "<title>%s</title><style>%s</style></head><body>" % (html.escape(title), STYLE),
           "<h1>%s</h1>" % html.escape(title),
           '<p>Generated %s. Scaling: %d cycles in the window, the last at %s.</p>'
           % (html.escape(generated), data["cycles"], html.escape(str(data["last_cycle"] or "never")))]
    out.append('<h2>Jobs</h2><table id="jobs"><tr><th>group</th><th>idle</th><th>running</th><th>short</th>'
               "<th>unfit</th></tr>")
    for group, counts in sorted(data["jobs"].items()):
        out.append("<tr>%s%s%s%s%s</tr>" % (
            _cell(group), _cell(counts.get("idle", 0), "jobs.%s.idle" % group),
            _cell(counts.get("running", 0), "jobs.%s.running" % group),
            _cell(data["shortfall"].get(group, 0), "shortfall.%s" % group),
            _cell(data["unfit"].get(group, 0), "unfit.%s" % group, "bad" if data["unfit"].get(group) else "")))
    out.append("</table>")
    out.append('<h2>Workers</h2><p>From the %s.</p><table id="workers"><tr><th>cloud</th>%s<th>total</th></tr>'
               % (html.escape(data["workers_from"]), "".join("<th>%s</th>" % s for s in STATES)))
    for cloud, states in sorted(data["workers"].items()):
        cells = "".join(_cell(states.get(s, 0), "workers.%s.%s" % (cloud, s)) for s in STATES)
        out.append("<tr>%s%s%s</tr>" % (_cell(cloud), cells, _cell(sum(states.values()), "workers.%s.total" % cloud)))
    out.append("</table>")
    out.append("<h2>Scaling over time</h2>")
    out.append('<p>Launched <span data-figure="launched">%d</span>, drained <span data-figure="drained">%d</span>, '
               'deleted <span data-figure="deleted">%d</span>; cycles with errors: '
               '<span data-figure="cycle_errors" class="%s">%d</span>.</p>'
               % (data["launched"], data["drained"], data["deleted"], "bad" if data["cycle_errors"] else "ok",
                  data["cycle_errors"]))
    out.append(line_plot("Jobs and workers", _series(cycles), "plot-jobs"))
    out.append(bar_plot("Launches and retirements", cycles, "plot-churn"))
    backups = data.get("backups")
    out.append("<h2>Last backups</h2>")
    if backups:
        out.append('<p>Finished %s: <span data-figure="backups.domains">%d</span> domains on %d hypervisors, '
                   '<span data-figure="backups.failed" class="%s">%d</span> failed.</p>'
                   % (html.escape(str(backups["finished"])), backups["domains"], backups["hosts"],
                      "bad" if backups["domains_failed"] or backups["hosts_failed"] else "ok",
                      len(backups["domains_failed"]) + len(backups["hosts_failed"])))
        out.append('<table id="backups"><tr><th>hypervisor</th><th>domain</th><th>state</th><th>seconds</th>'
                   "<th>bytes read</th><th>bytes added</th></tr>")
        for domain in backups["list"]:
            failed = domain.get("state") == "failed" or bool(domain.get("error"))
            out.append("<tr>%s%s%s%s%s%s</tr>" % (
                _cell(domain["host"]), _cell(domain.get("name")), _cell(domain.get("state"), css="bad" if failed else "ok"),
                _cell(domain.get("duration", "")), _cell(domain.get("bytes_read", "")), _cell(domain.get("bytes_added", ""))))
        out.append("</table>")
    else:
        out.append('<p class="empty">No backup summary given.</p>')
    images = data.get("images")
    out.append("<h2>Images</h2>")
    if images:
        heads = "".join("<th>%s</th>" % html.escape(c) for c in images["clouds"])
        out.append('<table id="images"><tr><th>image</th>%s</tr>' % heads)
        for image in images["images"]:
            row = [_cell(image)]
            for cloud in images["clouds"]:
                current = images["matrix"][image].get(cloud)
                row.append(_cell(current["version"] if current else "missing", "images.%s.%s" % (image, cloud),
                                 "ok" if current else "bad"))
            out.append("<tr>%s</tr>" % "".join(row))
        out.append("</table>")
    else:
        out.append('<p class="empty">No image matrix given.</p>')
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def render_text(title: str, generated: str, data: dict[str, Any]) -> str:
    lines = ["%s (%s)" % (title, generated),
             "scaling: %d cycles, last %s; launched %d, drained %d, deleted %d, cycles with errors %d"
             % (data["cycles"], data["last_cycle"] or "never", data["launched"], data["drained"], data["deleted"],
                data["cycle_errors"]), "jobs:"]
    for group, counts in sorted(data["jobs"].items()):
        lines.append("  %-20s idle %6d  running %6d  short %6d  unfit %6d" % (
            group, counts.get("idle", 0), counts.get("running", 0), data["shortfall"].get(group, 0),
            data["unfit"].get(group, 0)))
    lines.append("workers (%s):" % data["workers_from"])
    for cloud, states in sorted(data["workers"].items()):
        lines.append("  %-20s %s  total %d" % (cloud, "  ".join("%s %d" % (s, states.get(s, 0)) for s in STATES),
                                               sum(states.values())))
    if not data["workers"]:
        lines.append("  none")
    backups = data.get("backups")
    if not backups:
        lines.append("backups: no summary of backup.yml")
    else:
        failed = backups["hosts_failed"] + backups["domains_failed"]
        lines.append("backups: finished %s, %d domains on %d hypervisors, %d failed%s" % (
            backups["finished"], backups["domains"], backups["hosts"], len(failed),
            (": " + ", ".join(failed)) if failed else ""))
    images = data.get("images")
    if images:
        lines.append("images: %d on %d clouds, missing: %s" % (len(images["images"]), len(images["clouds"]),
                                                               ", ".join(images["missing"]) or "none"))
    return "\n".join(lines) + "\n"
