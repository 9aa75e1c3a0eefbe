# -*- coding: utf-8 -*-
# Copyright: hepinfra.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The backup_report filter used by playbooks/backup.yml (tested end to end there too)."""

from __future__ import annotations

import pytest

from ansible.errors import AnsibleFilterError
from ansible_collections.hepinfra.cloud.plugins.filter.backup_report import backup_report


def test_sums_disks_per_domain_and_keeps_errors():
    result = {"changed": True, "failed": True, "msg": "1 of 2 domains failed: ...", "domains": [
        {"name": "cm", "state": "backed up", "run": "r1", "duration": 3.5,
         "disks": [{"bytes_read": 10, "bytes_added": 2}, {"bytes_read": 5, "bytes_added": 1}]},
        {"name": "squid", "state": "failed", "run": "r2", "error": "domain squid: snapshot: no space", "disks": []},
    ]}
    report = backup_report(result)
    assert report["failed"] is True and report["msg"].startswith("1 of 2")
    assert report["domains"][0] == {"name": "cm", "state": "backed up", "run": "r1", "duration": 3.5,
                                    "bytes_read": 15, "bytes_added": 3}
    assert report["domains"][1]["error"] == "domain squid: snapshot: no space"


def test_unreachable_host_default_and_bad_input():
    assert backup_report({"failed": True, "msg": "host unreachable", "domains": []}) == {
        "failed": True, "msg": "host unreachable", "domains": []}
    assert backup_report({"unreachable": True, "msg": "ssh: connection refused"})["failed"] is True
    with pytest.raises(AnsibleFilterError):
        backup_report("nope")
