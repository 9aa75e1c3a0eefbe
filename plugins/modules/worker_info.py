#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hepinfra.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: worker_info
short_description: List the worker VMs hepinfra.cloud.worker owns across clouds, with their cloud and pool state
version_added: 0.1.0
description:
  - Lists every worker that M(hepinfra.cloud.worker) launched (by the ownership mark in the instance, never by name
    alone) on every selected cloud of O(clouds), asking all clouds at once, and asks the HTCondor collector once
    which of them are registered.
  - "Pool states: V(unregistered) (no slot in the collector yet, or never), V(idle) (slots, none claimed),
    V(busy) (a claimed slot), V(draining) (retired by the worker module, slots still there), V(error) (the instance
    is in error on its cloud)."
  - Never fails because a cloud or the collector does not answer; that is reported in RV(clouds) and RV(pool).
author:
  - hepinfra.cloud contributors (@hepinfra)
requirements:
  - openstacksdk (for OpenStack clouds)
  - libvirt-python (for libvirt clouds)
  - HTCondor's command line tools where the module runs, or reachable through O(condor.command_prefix)
extends_documentation_fragment:
  - hepinfra.cloud.clouds
attributes:
  check_mode:
    support: full
    description: Reads only; runs the same in check mode.
  diff_mode:
    support: none
    description: Changes nothing, so there is no diff.
options:
  group:
    description: Only workers of this group; all groups when unset.
    type: str
  config:
    description: Only workers of this worker configuration.
    type: str
  targets:
    description: Names of the clouds to ask; every enabled cloud when unset.
    type: list
    elements: str
  condor:
    description: How the module reaches the HTCondor collector.
    type: dict
    default: {}
    suboptions:
      command_prefix:
        description: A command the HTCondor tools are run through, for example V([ssh, cm.example.org]).
        type: list
        elements: str
        default: []
      collector:
        description: Ask the collector; V(false) reports every worker as V(unregistered).
        type: bool
        default: true
      timeout:
        description: Seconds C(condor_status) may take.
        type: int
        default: 60
"""

EXAMPLES = r"""
- name: Every worker of the site, and which are busy
  hepinfra.cloud.worker_info:
    clouds: "{{ hepinfra_clouds }}"
  register: site_workers

- name: Show the busy ATLAS workers
  ansible.builtin.debug:
    msg: "{{ site_workers.workers | selectattr('group', 'eq', 'atlas') | selectattr('pool_state', 'eq', 'busy')
             | map(attribute='name') }}"
"""

RETURN = r"""
workers:
  description: Every owned worker, sorted by cloud and name.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: The worker's name and host name, C(<group>--<cloud>--<uuid>).
      type: str
    uuid:
      description: The worker's UUID.
      type: str
    cloud:
      description: The cloud it runs on.
      type: str
    group:
      description: Its group.
      type: str
    config:
      description: Its worker configuration.
      type: str
    instance_id:
      description: The server ID (OpenStack) or domain UUID (libvirt).
      type: str
    cloud_state:
      description: V(building), V(active), V(stopped), V(error).
      type: str
    cloud_status:
      description: The cloud's own word for it (C(ACTIVE), C(BUILD), C(running), ...).
      type: str
    pool_state:
      description: V(unregistered), V(idle), V(busy), V(draining) or V(error).
      type: str
    created:
      description: When it was launched (UTC, ISO 8601).
      type: str
    expires:
      description: When its maximum lifetime ends.
      type: str
    slots:
      description: Its slots in the collector.
      type: int
    claimed_slots:
      description: Its claimed slots.
      type: int
clouds:
  description: Per cloud, whether it answered, the counts by pool state, and look-alike instances not owned.
  returned: always
  type: dict
pool:
  description: Whether the collector answered (C(ok), C(error)).
  returned: always
  type: dict
"""

import time

from ansible_collections.hepinfra.cloud.plugins.module_utils import _clouds, _worker_task as T, _workers as W
from ansible_collections.hepinfra.cloud.plugins.module_utils._base import HepinfraError, HepinfraModule, optional_import


class WorkerInfoModule(HepinfraModule):
    argument_spec = dict(
        group=dict(type="str"),
        config=dict(type="str"),
        targets=dict(type="list", elements="str"),
        condor=dict(type="dict", default={}, options=dict(
            command_prefix=dict(type="list", elements="str", default=[]),
            collector=dict(type="bool", default=True),
            timeout=dict(type="int", default=60),
        )),
    )
    shared_specs = ("clouds",)

    def run(self) -> dict:
        params = self.params
        if params["group"] is not None:
            W.check_group(params["group"])
        clouds = _clouds.select(_clouds.normalize(params["clouds"]), params["targets"])
        if not clouds:
            raise HepinfraError("no enabled cloud to ask", hint="Check targets and the clouds' enabled flags")
        libraries = {name: optional_import(name)[0] for name in ("openstack", "libvirt", "pycdlib")}
        runs = [T.CloudRun(T.Placement(cloud=cloud, count=0)) for cloud in clouds]
        condor = W.Condor(prefix=params["condor"]["command_prefix"], trust_domain="", timeout=params["condor"]["timeout"])
        try:
            T.connect_and_list(runs, libraries, params["group"], params["config"])
        finally:
            T.close_all(runs)
        pool_error = T.attach_pool([r for r in runs if r.error is None],
                                   condor if params["condor"]["collector"] else None)
        now = time.time()
        workers, reports = [], {}
        for run in runs:
            states: dict[str, int] = {}
            for worker in run.workers:
                states[worker.pool_state] = states.get(worker.pool_state, 0) + 1
                workers.append(worker.report(now))
            warnings = list(run.provider.warnings) if run.provider else []
            for warning in warnings:
                self.module.warn(warning)
            reports[run.name] = {"ok": run.error is None, "error": run.error, "total": len(run.workers),
                                 "states": states, "foreign": sorted(run.provider.foreign) if run.provider else [],
                                 "leftovers": list(run.leftovers), "warnings": warnings}
        if pool_error:
            self.module.warn(pool_error)
        workers.sort(key=lambda entry: (entry["cloud"], entry["name"]))
        return {"changed": False, "workers": workers, "clouds": reports,
                "pool": {"ok": pool_error is None, "error": pool_error,
                         "asked": bool(params["condor"]["collector"])}}


def main() -> None:
    WorkerInfoModule().execute()


if __name__ == "__main__":
    main()
