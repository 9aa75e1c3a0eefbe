#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hepinfra.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: libvirt_restore
short_description: Restore a libvirt domain or some of its disks from a libvirt_backup run
version_added: 0.1.0
description:
  - Restores the disks of one backup run made by M(hepinfra.cloud.libvirt_backup) into volumes of a libvirt
    storage pool and defines the domain again, optionally under another name, in another pool or on
    another hypervisor (run the module there).
  - Only complete runs (with a manifest) are restored. Every disk is hashed while it is written and
    compared with the SHA-256 recorded at backup time; with O(verify) the written volume is also read
    back and hashed again.
  - Refuses to replace a running domain (always), a defined domain or existing volumes (unless O(force)).
  - If anything fails, the volumes created by this run are deleted and no domain is defined.
  - "A renamed restore gets a new identity: no UUID and no MAC addresses are taken from the backup, so
    libvirt makes new ones and the copy can run beside the original. Under the original name, the
    identity is kept unless another domain already uses the UUID."
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
    details: Reads the repository to choose the run and checks for conflicts; writes nothing.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: none
options:
  uri:
    description:
      - The libvirt connection URI of the hypervisor to restore onto. The pool's volumes must be writable
        where the module runs.
    type: str
    default: qemu:///system
  domain:
    description:
      - The name of the domain as it was backed up.
    type: str
    required: true
  snapshot:
    description:
      - Which run to restore, by run id (C(20261128T091500Z-1a2b3c)) or the restic snapshot id of its
        manifest (8 characters or more). V(latest) is the newest complete run.
    type: str
    default: latest
  snapshot_host:
    description:
      - Only runs recorded with this restic host name (the O(hepinfra.cloud.libvirt_backup#module:snapshot_host) of the backup).
        By default runs from any host.
    type: str
  name:
    description:
      - The name of the restored domain and the prefix of its volumes (C(<name>-<disk>.qcow2)). Defaults to
        the backed-up name.
    type: str
  pool:
    description:
      - The storage pool that receives the restored volumes. It must be active.
    type: str
    required: true
  format:
    description:
      - The format of the restored volumes.
    type: str
    choices: [qcow2, raw]
    default: qcow2
  disks:
    description:
      - Restore only these disk targets. Needs O(define=false).
    type: list
    elements: str
  define:
    description:
      - Define the domain from the backed-up XML, its disks pointing at the restored volumes.
    type: bool
    default: true
  start:
    description:
      - Start the domain after defining it.
    type: bool
    default: false
  force:
    description:
      - Overwrite existing volumes of the same names and replace the definition of a shut-off domain of
        the same name. A running domain is never replaced.
    type: bool
    default: false
  verify:
    description:
      - Read every restored volume back and compare its SHA-256 with the backup's.
    type: bool
    default: true
notes:
  - Restoring the same run again fails on the existing volumes unless O(force) is set; the module restores,
    it does not converge.
seealso:
  - module: hepinfra.cloud.libvirt_backup
"""

EXAMPLES = r"""
- name: Restore the latest backup of the central manager under a new name into the 'restore' pool
  hepinfra.cloud.libvirt_restore:
    repository: s3:https://s3.example.org/site-backups/hv01
    repository_password: "{{ vault_backup_password }}"
    s3_access_key_id: "{{ vault_s3_key }}"
    s3_secret_access_key: "{{ vault_s3_secret }}"
    domain: condor-cm
    name: condor-cm-restored
    pool: restore

- name: Restore one disk of a given run, without defining a domain
  hepinfra.cloud.libvirt_restore:
    repository: /srv/restic/vms
    repository_password_file: /etc/hepinfra/restic-password
    domain: squid01
    snapshot: 20261128T091500Z-1a2b3c
    disks: [vdb]
    define: false
    pool: default
    format: raw
"""

RETURN = r"""
name:
  description: The name of the restored domain.
  returned: always
  type: str
  sample: condor-cm-restored
run:
  description: The backup run restored.
  returned: always
  type: str
  sample: 20261128T091500Z-1a2b3c
manifest_snapshot:
  description: The restic snapshot id of the run's manifest.
  returned: always
  type: str
backed_up_at:
  description: When the run was made (UTC).
  returned: always
  type: str
disks:
  description: The restored disks (in check mode, the volumes that would be written).
  returned: always
  type: list
  elements: dict
  contains:
    target:
      description: The disk target.
      type: str
    volume:
      description: The volume name in the pool.
      type: str
    path:
      description: The volume's path.
      type: str
      returned: success, not in check mode
    size:
      description: Bytes restored (the disk's virtual size).
      type: int
    sha256:
      description: SHA-256 of the restored contents, equal to the backup's.
      type: str
    verified:
      description: Whether the volume was read back and matched.
      type: bool
      returned: success, not in check mode
    duration:
      description: Seconds the disk took.
      type: float
      returned: success, not in check mode
defined:
  description: Whether the domain was defined.
  returned: always
  type: bool
started:
  description: Whether the domain was started.
  returned: always
  type: bool
duration:
  description: Seconds the restore took.
  returned: success, not in check mode
  type: float
"""

from ansible_collections.hepinfra.cloud.plugins.module_utils._base import HepinfraError, HepinfraModule
from ansible_collections.hepinfra.cloud.plugins.module_utils._libvirt_backup import find_tools
from ansible_collections.hepinfra.cloud.plugins.module_utils._libvirt_restore import DomainRestore
from ansible_collections.hepinfra.cloud.plugins.module_utils._restic import (
    RESTIC_MUTUALLY_EXCLUSIVE, RESTIC_REQUIRED_ONE_OF, Restic, check_repository,
)


class LibvirtRestore(HepinfraModule):
    argument_spec = {
        "uri": {"type": "str", "default": "qemu:///system"},
        "domain": {"type": "str", "required": True},
        "snapshot": {"type": "str", "default": "latest"},
        "snapshot_host": {"type": "str"},
        "name": {"type": "str"},
        "pool": {"type": "str", "required": True},
        "format": {"type": "str", "choices": ["qcow2", "raw"], "default": "qcow2"},
        "disks": {"type": "list", "elements": "str"},
        "define": {"type": "bool", "default": True},
        "start": {"type": "bool", "default": False},
        "force": {"type": "bool", "default": False},
        "verify": {"type": "bool", "default": True},
    }
    shared_specs = ("restic",)
    requirements = (("libvirt", "libvirt-python"),)
    module_kwargs = {"mutually_exclusive": RESTIC_MUTUALLY_EXCLUSIVE, "required_one_of": RESTIC_REQUIRED_ONE_OF}

    def tools(self) -> dict[str, str]:
        return find_tools(self.module.get_bin_path, self.params["restic_path"])

    def run(self):
        if self.params["start"] and not self.params["define"]:
            raise HepinfraError("start needs define: true")
        libvirt = self.libraries["libvirt"]
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
        tools = self.tools()
        check_repository(self.params["repository"])
        restic = Restic(self.params, tools["restic"])
        restic.ensure(init=False, unlock=not self.check_mode)
        try:
            conn = libvirt.open(self.params["uri"])
        except libvirt.libvirtError as exc:
            raise HepinfraError("cannot connect: %s" % exc.get_error_message(), target="libvirt %s" % self.params["uri"]) from None
        try:
            job = DomainRestore(libvirt, conn, restic, tools, dict(self.params))
            plan = job.plan()
            common = {"name": plan["name"], "run": plan["run"], "manifest_snapshot": plan["snapshot"]["id"],
                      "backed_up_at": plan["manifest"].get("time")}
            if self.check_mode:
                disks = [{key: entry[key] for key in ("target", "volume", "size", "sha256")} for entry in plan["volumes"]]
                return self.result(True, disks=disks, defined=False, started=False, **common)
            try:
                outcome = job.run(plan)
            except HepinfraError as exc:
                raise HepinfraError("%s: %s" % (job.phase, exc.message), target=exc.target or "domain %s" % plan["name"],
                                    hint=exc.hint) from None
            except libvirt.libvirtError as exc:
                raise HepinfraError("%s: %s" % (job.phase, exc.get_error_message()), target="domain %s" % plan["name"]) from None
            outcome.update(common)
            return self.result(True, **outcome)
        finally:
            conn.close()


def main():
    LibvirtRestore().execute()


if __name__ == "__main__":
    main()
