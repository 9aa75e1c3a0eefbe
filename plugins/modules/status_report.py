#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hepinfra.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: status_report
short_description: Write the site's status page (HTML with plots) and a text summary
version_added: 0.1.0
description:
  - "Reads the scaling history that M(hepinfra.cloud.scale) appends to and writes two files into O(dest):
    C(index.html), one self-contained page (inline SVG plots, no script, nothing fetched), and C(status.txt)."
  - "The page shows: idle and running jobs per group with shortfall and unfit jobs (the last cycle); workers per cloud
    and state (O(workers) from M(hepinfra.cloud.worker_info), or else the last cycle's count); launches, drains and
    deletions over the last O(hours) as plots; the last backups (O(backups), the C(last.json) of the
    C(hepinfra.cloud.backup) playbook); the image x cloud matrix (O(matrix), from M(hepinfra.cloud.image_info))."
  - Every figure on the page carries a C(data-figure) attribute (for example C(jobs.atlas.idle)), so that checks can
    read it.
  - A line of the history that cannot be read (cut short by a crash) is skipped and counted in RV(skipped_lines).
  - The files are replaced atomically, and only when a figure changed (the generation time alone is no change).
author:
  - hepinfra.cloud contributors (@hepinfra)
attributes:
  check_mode:
    support: full
    description: Computes the figures and reports whether the files would change, writing nothing.
  diff_mode:
    support: none
    description: The files are reports; no diff is shown.
options:
  dest:
    description: The directory for C(index.html) and C(status.txt); created when missing.
    type: path
    required: true
  history:
    description: The scaling history (JSON lines). A missing file is an empty history.
    type: path
    default: ~/.local/state/hepinfra-cloud/scale-history.jsonl
  hours:
    description: The window of the history plotted and summed, in hours before now.
    type: int
    default: 24
  backups:
    description:
      - The backup summary C(last.json) of the C(hepinfra.cloud.backup) playbook; the section is left empty without it
        (a missing file is a warning).
    type: path
  workers:
    description: The RV(hepinfra.cloud.worker_info#module:workers) list, for the current workers per cloud and state.
    type: list
    elements: dict
  matrix:
    description: The RV(hepinfra.cloud.image_info#module:matrix) of M(hepinfra.cloud.image_info).
    type: dict
  title:
    description: The page's title.
    type: str
    default: hepinfra.cloud site status
"""

EXAMPLES = r"""
- name: Current workers
  hepinfra.cloud.worker_info:
    clouds: "{{ hepinfra_clouds }}"
  register: site_workers

- name: The status page
  hepinfra.cloud.status_report:
    dest: /var/www/html/hepinfra
    workers: "{{ site_workers.workers }}"
    backups: ~/.local/state/hepinfra/backup/last.json
"""

RETURN = r"""
figures:
  description: The numbers on the page.
  returned: always
  type: dict
  contains:
    cycles:
      description: Scaling cycles in the window.
      type: int
    jobs:
      description: Per group, idle and running jobs at the last cycle.
      type: dict
    workers:
      description: Per cloud, workers by state.
      type: dict
    launched:
      description: Workers launched in the window.
      type: int
    deleted:
      description: Workers deleted in the window.
      type: int
files:
  description: The paths of the page and the text summary.
  returned: always
  type: list
  elements: str
text:
  description: The text summary.
  returned: always
  type: str
skipped_lines:
  description: History lines that could not be read.
  returned: always
  type: int
"""

import json
import os
import re
import tempfile
import time

from ansible_collections.hepinfra.cloud.plugins.module_utils import _status
from ansible_collections.hepinfra.cloud.plugins.module_utils._base import HepinfraError, HepinfraModule

GENERATED = re.compile(r"^(<p>)?Generated [^.]*\.|^.* \(\d{4}-\d\d-\d\dT[0-9:]+Z\)$", re.M)


class StatusReportModule(HepinfraModule):
    argument_spec = dict(
        dest=dict(type="path", required=True),
        history=dict(type="path", default="~/.local/state/hepinfra-cloud/scale-history.jsonl"),
        hours=dict(type="int", default=24),
        backups=dict(type="path"),
        workers=dict(type="list", elements="dict"),
        matrix=dict(type="dict"),
        title=dict(type="str", default="hepinfra.cloud site status"),
    )

    def run(self) -> dict:
        params = self.params
        if params["hours"] < 1:
            raise HepinfraError("hours must be 1 or more")
        now = time.time()
        try:
            with open(params["history"], encoding="utf-8") as handle:
                cycles, skipped = _status.read_history(handle, now - params["hours"] * 3600)
        except FileNotFoundError:
            cycles, skipped = [], 0
        except OSError as exc:
            raise HepinfraError("cannot read the history %s: %s" % (params["history"], exc.strerror)) from None
        backups = None
        if params["backups"]:
            try:
                with open(params["backups"], encoding="utf-8") as handle:
                    backups = json.load(handle)
            except FileNotFoundError:
                self.module.warn("no backup summary at %s yet: the page shows none" % params["backups"])
            except (OSError, ValueError) as exc:
                raise HepinfraError("cannot read the backup summary %s: %s" % (params["backups"], exc)) from None
        data = _status.figures(cycles, params["workers"], backups, params["matrix"])
        generated = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
        page = _status.render_html(params["title"], generated, data, cycles)
        text = _status.render_text(params["title"], generated, data)
        files = {os.path.join(params["dest"], "index.html"): page, os.path.join(params["dest"], "status.txt"): text}
        changed = any(self._differs(path, content) for path, content in files.items())
        if changed and not self.check_mode:
            os.makedirs(params["dest"], exist_ok=True)
            for path, content in files.items():
                self._write(path, content)
        summary = {k: v for k, v in data.items() if k not in ("backups", "images")}
        if "backups" in data:
            summary["backups"] = {k: v for k, v in data["backups"].items() if k != "list"}
        if "images" in data:
            summary["images"] = {k: v for k, v in data["images"].items() if k != "matrix"}
        return self.result(changed, figures=summary, files=sorted(files), text=text, skipped_lines=skipped)

    @staticmethod
    def _differs(path: str, content: str) -> bool:
        try:
            with open(path, encoding="utf-8") as handle:
                old = handle.read()
        except OSError:
            return True
        return GENERATED.sub("", old) != GENERATED.sub("", content)

    @staticmethod
    def _write(path: str, content: str) -> None:
        folder = os.path.dirname(path)
        handle, temporary = tempfile.mkstemp(dir=folder, prefix=".status-")
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                out.write(content)
            os.chmod(temporary, 0o644)
            os.replace(temporary, path)
        except BaseException:
            if os.path.exists(temporary):
                os.unlink(temporary)
            raise


def main() -> None:
    StatusReportModule().execute()


if __name__ == "__main__":
    main()
