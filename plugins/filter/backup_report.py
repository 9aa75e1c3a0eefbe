# -*- coding: utf-8 -*-
# Copyright: hepinfra.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The backup_report filter: a libvirt_backup result reduced to what a summary shows."""

from __future__ import annotations

from typing import Any

from ansible.errors import AnsibleFilterError


def backup_report(result: Any) -> dict[str, Any]:
    """{failed, msg, domains: [{name, state, run, duration, bytes_read, bytes_added, error?}]}."""
    if not isinstance(result, dict):
        raise AnsibleFilterError("backup_report expects the registered result of hepinfra.cloud.libvirt_backup, got %s"
                                 % type(result).__name__)
    domains = []
    for entry in result.get("domains") or []:
        disks = entry.get("disks") or []
        domain = {
            "name": entry.get("name"),
            "state": entry.get("state", "unknown"),
            "run": entry.get("run"),
            "duration": entry.get("duration", 0),
            "bytes_read": sum(disk.get("bytes_read", 0) for disk in disks),
            "bytes_added": sum(disk.get("bytes_added", 0) for disk in disks),
        }
        if entry.get("error"):
            domain["error"] = entry["error"]
        domains.append(domain)
    failed = bool(result.get("failed") or result.get("unreachable"))
    return {"failed": failed, "msg": str(result.get("msg", "")) if failed else "", "domains": domains}


class FilterModule:
    def filters(self):
        return {"backup_report": backup_report}
