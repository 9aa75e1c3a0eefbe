#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hepinfra.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: libvirt_backup
short_description: Back up running or shut-off libvirt domains into a restic repository
version_added: 0.1.0
description:
  - Backs up the definition (inactive XML) and the disks of libvirt/KVM domains into a restic
    repository (S3, rest-server, sftp or a local path), without stopping them.
  - "For a running domain: a disk-only external snapshot puts a temporary qcow2 overlay on every
    writable disk (the guest's file systems frozen for that instant through its agent, see
    O(quiesce)), each original image is streamed flat (raw) through C(qemu-nbd) and C(nbdcopy)
    into C(restic backup --stdin) while the guest writes to the overlay, and the overlays are then
    committed back (active, shallow) and pivoted away. No full local copy is made, so restic's
    deduplication and encryption apply to the disk contents; a second run adds only changed chunks."
  - A shut-off domain is read as it is.
  - "Each run writes one restic snapshot per disk (file C(<domain>.<disk>.raw)) and last a manifest
    (C(<domain>.manifest.json)) with the domain XML and the size and SHA-256 of every disk. A run
    without a manifest is incomplete: M(hepinfra.cloud.libvirt_restore) never uses it and
    retention forgets it."
  - "If any phase fails (guest agent, snapshot, restic, repository, disk full), the domain is put
    back on its original images, the overlays are deleted, the snapshots of that run are
    forgotten, and the error names the phase. Overlays left by a run that was killed are committed
    back by the next run (see RV(domains[].recovered)). No libvirt snapshot or checkpoint metadata
    is ever created."
  - Runs on the hypervisor (delegate to it). The disk images must be readable where the module
    runs, so a remote O(uri) is only useful with storage shared at the same paths.
  - Domains are backed up one after another; a failing domain does not stop the others, and the
    module fails at the end naming every failed domain.
author:
  - hepinfra.cloud contributors (@hepinfra)
requirements:
  - libvirt-python
  - restic 0.17 or later
  - qemu-nbd (qemu-utils) and nbdcopy (libnbd-bin on Debian, libnbd on Enterprise Linux)
extends_documentation_fragment:
  - hepinfra.cloud.restic
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details: Lists the domains and disks that would be backed up; neither libvirt nor the repository is changed.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: none
options:
  uri:
    description:
      - The libvirt connection URI.
    type: str
    default: qemu:///system
  domains:
    description:
      - Names of the domains to back up; shell-style patterns (C(*), C(?), C([...])) match several.
      - A name without a pattern character that matches no domain is an error; a pattern that matches
        nothing is not.
    type: list
    elements: str
    default: ['*']
  exclude:
    description:
      - Patterns of domain names to leave out.
    type: list
    elements: str
    default: []
  disks:
    description:
      - Disk targets (C(vda), C(sdb), ...) to back up. By default every disk device with a file or block
        source; cdrom and floppy devices are left out unless named here.
      - A domain without one of the named disks fails.
    type: list
    elements: str
  quiesce:
    description:
      - Freeze the guest's file systems through the QEMU guest agent for the instant of the snapshot.
      - V(auto) quiesces when the agent is connected and otherwise takes a crash-consistent snapshot
        (said in RV(domains[].quiesced)); V(required) fails the domain when it cannot quiesce; V(never)
        does not try.
    type: str
    choices: [auto, required, never]
    default: auto
  overlay_dir:
    description:
      - Directory for the temporary overlays that take the guest's writes during the backup. By default
        next to each disk image. It needs room for what the guests write while their disks are read.
    type: path
  init:
    description:
      - Create the repository (and its S3 bucket) if it does not exist.
    type: bool
    default: true
  snapshot_host:
    description:
      - The host name recorded in the restic snapshots (restic's C(--host)), which retention and restores
        group by. Defaults to the hypervisor's fully qualified name.
    type: str
  tags:
    description:
      - More restic tags for every snapshot of the run (no commas; C(run=), C(kind=), C(domain=) and C(disk=) are reserved).
    type: list
    elements: str
    default: []
  keep_last:
    description:
      - Keep the last N runs of each domain. With no C(keep_*) option set, nothing is forgotten.
    type: int
  keep_daily:
    description:
      - Keep the last run of each of the last N days.
    type: int
  keep_weekly:
    description:
      - Keep the last run of each of the last N weeks.
    type: int
  keep_monthly:
    description:
      - Keep the last run of each of the last N months.
    type: int
  prune:
    description:
      - Run C(restic prune) after retention forgot snapshots, to free the space.
    type: bool
    default: true
  check:
    description:
      - Run C(restic check) at the end.
    type: bool
    default: false
  check_read_data_subset:
    description:
      - With O(check), also read and verify this part of the pack files, for example C(5%) or C(1/7).
    type: str
notes:
  - Keep shared base images read-only; the commit is always shallow, so it never writes into a backing
    image below the disk's own image.
  - Passwords and keys reach restic through its environment only; they are not in the module's result.
seealso:
  - module: hepinfra.cloud.libvirt_restore
  - name: restic documentation
    description: Repository URLs and environment variables.
    link: https://restic.readthedocs.io/
"""

EXAMPLES = r"""
- name: Back up every VM on the hypervisor into S3, keeping 7 daily and 4 weekly runs
  hepinfra.cloud.libvirt_backup:
    repository: s3:https://s3.example.org/site-backups/{{ inventory_hostname }}
    repository_password: "{{ vault_backup_password }}"
    s3_access_key_id: "{{ vault_s3_key }}"
    s3_secret_access_key: "{{ vault_s3_secret }}"
    exclude: ["worker--*"]
    keep_daily: 7
    keep_weekly: 4
  register: backup

- name: Back up the central manager's system disk, failing if it cannot be quiesced
  hepinfra.cloud.libvirt_backup:
    repository: /srv/restic/vms
    repository_password_file: /etc/hepinfra/restic-password
    domains: [condor-cm]
    disks: [vda]
    quiesce: required
"""

RETURN = r"""
domains:
  description: What happened to each domain, in name order.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: The domain name.
      type: str
      sample: condor-cm
    run:
      description: The run id, also in the tag C(run=<id>) of every snapshot of the run.
      type: str
      sample: 20261128T091500Z-1a2b3c
    state:
      description: C(backed up), C(would back up) (check mode) or C(failed).
      type: str
      sample: backed up
    running:
      description: Whether the domain was running (backed up live).
      type: bool
    quiesced:
      description: Whether the guest's file systems were frozen for the snapshot.
      type: bool
    manifest_snapshot:
      description: The restic snapshot id of the run's manifest.
      type: str
    duration:
      description: Seconds the domain took.
      type: float
    error:
      description: For a failed domain, what failed.
      type: str
    phase:
      description: For a failed domain, the phase that failed (recover, plan, quiesce, snapshot, backup <disk>, manifest, commit, retention).
      type: str
    recovered:
      description: Overlays of an interrupted earlier run that were committed back first.
      type: list
      elements: dict
    forgotten:
      description: Snapshot ids retention forgot for this domain.
      type: list
      elements: str
    disks:
      description: One entry per disk backed up.
      type: list
      elements: dict
      contains:
        target:
          description: The disk target.
          type: str
          sample: vda
        source:
          description: The image path.
          type: str
        snapshot_id:
          description: The restic snapshot id of the disk.
          type: str
        size:
          description: The disk's virtual size in bytes (the length of the raw stream).
          type: int
        sha256:
          description: SHA-256 of the raw disk contents as backed up.
          type: str
        bytes_read:
          description: Bytes read from the image.
          type: int
        bytes_added:
          description: Bytes restic added to the repository (before compression) for this disk.
          type: int
        duration:
          description: Seconds the disk took.
          type: float
repository:
  description: The repository (without credentials), in check mode.
  returned: check mode
  type: str
repository_created:
  description: Whether the repository was created by this run.
  returned: success
  type: bool
pruned:
  description: Whether C(restic prune) ran.
  returned: success
  type: bool
check:
  description: The output of C(restic check), when O(check) is set.
  returned: when O(check) is set
  type: str
"""

import signal
import socket
import subprocess

from ansible_collections.hepinfra.cloud.plugins.module_utils._base import HepinfraError, HepinfraModule
from ansible_collections.hepinfra.cloud.plugins.module_utils._libvirt_backup import DomainBackup, find_tools
from ansible_collections.hepinfra.cloud.plugins.module_utils._libvirt_disks import check_tag, new_run_id, select_domains
from ansible_collections.hepinfra.cloud.plugins.module_utils._restic import (
    RESTIC_MUTUALLY_EXCLUSIVE, RESTIC_REQUIRED_ONE_OF, Restic, check_repository, redact_url,
)


class Interrupted(Exception):
    """The module was asked to stop (SIGTERM, SIGHUP)."""


KEEP = ("keep_last", "keep_daily", "keep_weekly", "keep_monthly")
PATTERN_CHARS = "*?["


class LibvirtBackup(HepinfraModule):
    argument_spec = {
        "uri": {"type": "str", "default": "qemu:///system"},
        "domains": {"type": "list", "elements": "str", "default": ["*"]},
        "exclude": {"type": "list", "elements": "str", "default": []},
        "disks": {"type": "list", "elements": "str"},
        "quiesce": {"type": "str", "choices": ["auto", "required", "never"], "default": "auto"},
        "overlay_dir": {"type": "path"},
        "init": {"type": "bool", "default": True},
        "snapshot_host": {"type": "str"},
        "tags": {"type": "list", "elements": "str", "default": []},
        "keep_last": {"type": "int"},
        "keep_daily": {"type": "int"},
        "keep_weekly": {"type": "int"},
        "keep_monthly": {"type": "int"},
        "prune": {"type": "bool", "default": True},
        "check": {"type": "bool", "default": False},
        "check_read_data_subset": {"type": "str"},
    }
    shared_specs = ("restic",)
    requirements = (("libvirt", "libvirt-python"),)
    module_kwargs = {"mutually_exclusive": RESTIC_MUTUALLY_EXCLUSIVE, "required_one_of": RESTIC_REQUIRED_ONE_OF}

    def tools(self) -> dict[str, str]:
        return find_tools(self.module.get_bin_path, self.params["restic_path"])

    def validate(self) -> None:
        problems = [problem for problem in map(check_tag, self.params["tags"]) if problem]
        problems += ["%s must be at least 1" % key for key in KEEP if self.params[key] is not None and self.params[key] < 1]
        if self.params["repository_timeout"] < 1:
            problems.append("repository_timeout must be at least 1")
        if problems:
            raise HepinfraError("; ".join(problems))

    def run(self):
        self.validate()
        check_repository(self.params["repository"])
        libvirt = self.libraries["libvirt"]
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
        tools = self.tools()
        try:
            conn = libvirt.open(self.params["uri"])
        except libvirt.libvirtError as exc:
            raise HepinfraError("cannot connect: %s" % exc.get_error_message(), target="libvirt %s" % self.params["uri"]) from None
        try:
            return self.backup(libvirt, conn, tools)
        finally:
            conn.close()

    def backup(self, libvirt, conn, tools):
        all_names = [dom.name() for dom in conn.listAllDomains()]
        missing = [name for name in self.params["domains"]
                   if not any(char in name for char in PATTERN_CHARS) and name not in all_names]
        if missing:
            raise HepinfraError("no such domain: %s" % ", ".join(missing), target="libvirt %s" % self.params["uri"])
        names = select_domains(all_names, self.params["domains"], self.params["exclude"])
        host = self.params["snapshot_host"] or socket.getfqdn()
        restic = Restic(self.params, tools["restic"], host=host)
        options = {key: self.params[key] for key in ("disks", "quiesce", "overlay_dir", "tags")}

        if self.check_mode:
            plans = []
            for name in names:
                job = DomainBackup(libvirt, conn, name, restic, tools, dict(options, run_id=new_run_id()))
                try:
                    plans.append(job.describe())
                except HepinfraError as exc:
                    plans.append(dict(job.result, state="failed", error=str(exc), phase=exc.details.get("phase", "plan")))
            failed = [plan for plan in plans if plan["state"] == "failed"]
            if failed:
                self.fail_domains(failed, plans, changed=False)
            return self.result(bool(names), domains=plans, repository=redact_url(self.params["repository"]))

        created = restic.ensure(self.params["init"])
        interrupted = []

        def stop(signum, _frame):
            # Once: the commit that follows must not be interrupted by a second signal.
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
            interrupted.append(signum)
            raise Interrupted("interrupted by signal %d" % signum)

        # A stopped ansible-playbook (Ctrl-C, a timer's timeout, a lost SSH session) still gets its
        # domains back onto their images.
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGHUP, stop)
        policy = {key: self.params[key] for key in KEEP if self.params[key] is not None}
        results = []
        warnings = []
        for name in names:
            job = None
            try:
                job = DomainBackup(libvirt, conn, name, restic, tools, dict(options, run_id=new_run_id()))
                results.append(job.run(policy, host))
            except HepinfraError as exc:
                base = job.result if job is not None else {"name": name, "disks": [], "recovered": []}
                phase = exc.details.get("phase") or (job.phase if job is not None else "start")
                results.append(dict(base, state="failed", error=str(exc), phase=phase))
            except (libvirt.libvirtError, OSError, subprocess.SubprocessError, Interrupted) as exc:
                # The domain vanished, a lock could not be taken, ...: this domain fails, the others go on.
                message = exc.get_error_message() if isinstance(exc, libvirt.libvirtError) else str(exc)
                phase = job.phase if job is not None else "start"
                base = job.result if job is not None else {"name": name, "disks": [], "recovered": []}
                results.append(dict(base, state="failed", error="domain %s: %s: %s" % (name, phase, message), phase=phase))
            if job is not None:
                warnings += job.warnings
            if interrupted:
                break
        forgotten_any = any(entry.get("forgotten") for entry in results)
        failed = [entry for entry in results if entry["state"] == "failed"]
        changed = created or any(entry["state"] == "backed up" or entry.get("recovered") for entry in results)
        extra = {}
        try:
            if forgotten_any and self.params["prune"]:
                restic.prune()
                extra["pruned"] = True
            if self.params["check"]:
                extra["check"] = restic.check(self.params["check_read_data_subset"])
        except HepinfraError as exc:
            # Reported beside the domains' results, not instead of them.
            failed.append({"error": str(exc)})
        for warning in warnings:
            self.module.warn(warning)
        if interrupted:
            failed.append({"error": "interrupted by signal %d before %d more domains" % (interrupted[0], len(names) - len(results))})
        if failed:
            self.fail_domains(failed, results, changed=changed)
        return self.result(changed, domains=results, repository_created=created, pruned=extra.get("pruned", False),
                           **({"check": extra["check"]} if "check" in extra else {}))

    def fail_domains(self, failed, results, changed):
        domains = [entry for entry in failed if "name" in entry]
        message = "; ".join(entry["error"] for entry in failed)
        if domains:
            message = "%d of %d domains failed: %s" % (len(domains), len(results), message)
        self._fail(message, {"domains": results, "changed": changed})


def main():
    LibvirtBackup().execute()


if __name__ == "__main__":
    main()
