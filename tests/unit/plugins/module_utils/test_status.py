# -*- coding: utf-8 -*-
# Copyright: hepinfra.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import json
import re

from ansible_collections.hepinfra.cloud.plugins.module_utils import _status

T0 = 1_800_000_000.0


def cycle(minute, idle, running, workers, launched=None, deleted=0, errors=0):
    return {"time": "t%d" % minute, "epoch": T0 + 60 * minute, "jobs": {"atlas": {"idle": idle, "running": running}},
            "workers": {"hv1": workers}, "launched": launched or {}, "drained": deleted, "deleted": deleted,
            "shortfall": {}, "unfit": {"atlas": 1}, "errors": errors}


HISTORY = [cycle(0, 5, 0, {}, {"hv1": {"atlas": 2}}), cycle(1, 1, 4, {"busy": 2}), cycle(2, 0, 0, {"idle": 2}),
           cycle(3, 0, 0, {"idle": 2}, deleted=2, errors=1)]


def test_history_window_and_damaged_lines():
    lines = [json.dumps(entry) for entry in reversed(HISTORY)] + ['{"epoch": 18000', "", "not json"]
    cycles, bad = _status.read_history(lines, since=T0 + 60)
    assert [c["time"] for c in cycles] == ["t1", "t2", "t3"] and bad == 2


def test_figures_of_a_known_run():
    backups = {"finished": "2026-12-04T02:40:00Z", "hosts": {
        "hv1": {"failed": False, "domains": [{"name": "cm", "state": "done", "duration": 12}]},
        "hv2": {"failed": True, "msg": "host unreachable", "domains": []}}}
    matrix = {"worker-el9": {"hv1": {"version": "v2", "sha256": "x"}, "os1": None}}
    data = _status.figures(HISTORY, None, backups, matrix)
    assert (data["cycles"], data["launched"], data["drained"], data["deleted"], data["cycle_errors"]) == (4, 2, 2, 2, 1)
    assert data["jobs"] == {"atlas": {"idle": 0, "running": 0}} and data["workers"] == {"hv1": {"idle": 2}}
    assert data["backups"]["hosts_failed"] == ["hv2"] and data["backups"]["domains"] == 1
    assert data["images"]["missing"] == ["worker-el9@os1"]
    live = _status.figures(HISTORY, [{"cloud": "hv1", "pool_state": "busy"}, {"cloud": "os1", "pool_state": "unregistered"}],
                           None, None)
    assert live["workers"] == {"hv1": {"busy": 1}, "os1": {"starting": 1}} and live["workers_from"] == "worker_info"


def test_page_and_text_carry_the_figures():
    data = _status.figures(HISTORY, None, None, {"img": {"hv1": None}})
    page = _status.render_html("Site <A>", "2026-12-04T12:00:00Z", data, HISTORY)
    figure = dict(re.findall(r'data-figure="([^"]+)"[^>]*>([^<]*)<', page))
    assert figure["jobs.atlas.idle"] == "0" and figure["unfit.atlas"] == "1" and figure["launched"] == "2"
    assert figure["workers.hv1.idle"] == "2" and figure["images.img.hv1"] == "missing"
    assert "<title>Site &lt;A&gt;</title>" in page and "<script" not in page
    assert page.count("<svg") == 2 and 'data-launched="2"' in page
    text = _status.render_text("Site", "2026-12-04T12:00:00Z", data)
    assert "launched 2, drained 2, deleted 2, cycles with errors 1" in text
    assert "images: 1 on 1 clouds, missing: img@hv1" in text
    assert "backups: no summary of backup.yml" in text
    empty = _status.render_html("Site", "now", _status.figures([], None, None, None), [])
    assert "No scaling cycles in this window." in empty
    # after the demo: every worker retired, which worker_info reports as no workers at all
    retired = _status.render_text("Site", "now", _status.figures(HISTORY, [], None, None))
    assert "workers (worker_info):\n  none\n" in retired
