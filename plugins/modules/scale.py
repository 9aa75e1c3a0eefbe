#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hepinfra.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: scale
short_description: One queue-driven scaling cycle - launch workers where jobs wait, retire the idle ones
version_added: 0.1.0
description:
  - "One cycle, meant to run every minute or so from a systemd timer, AWX or Rundeck (C(hepinfra.cloud.scale)
    playbook): read the queues, the workers and the clouds and decide exactly as M(hepinfra.cloud.demand_info) does,
    then retire, then launch, then append one line to O(history)."
  - Retiring works as in M(hepinfra.cloud.worker) - registered workers are drained (C(condor_drain -graceful)) and
    deleted once no job is left on them (idle ones within O(drain_wait) in the same cycle), workers not in the pool
    are deleted, a busy worker is never deleted. Drained workers, workers in error and workers that never registered
    are deleted by any cycle.
  - Launching works as in M(hepinfra.cloud.worker) - per new worker its own token, the user-data of O(user_data) with
    the worker's context, the ownership mark in the instance, an audit record in O(audit_log). Workers of a group
    use the flavor the decision chose for the jobs, the image of O(groups[].image) or the cloud's C(defaults.image),
    and the network, key and security groups of the cloud's C(defaults).
  - "Safe to run concurrently: the whole cycle holds an exclusive lock on O(lock_file) on the host the module runs
    on; a second cycle waits for it (up to O(lock_timeout)), then reads the state the first one left (its workers
    are starting and cover the jobs), so two cycles started together launch once. Run every cycle of a site on the
    same host (for example C(delegate_to) the central manager)."
  - While it sees a worker busy, the module records the time in the instance (metadata C(hepinfra_busy), at most once
    per quarter of O(policy.keep_alive), between 30 s and 5 min), so that keep-alive counts from the last job even
    where the pool's slot ads do not say when a partitionable slot last ran one.
  - A cloud or schedd that does not answer is left out of this cycle and reported; the others are scaled, and the task
    fails at the end naming what failed.
author:
  - hepinfra.cloud contributors (@hepinfra)
requirements:
  - HTCondor's command line tools where the module runs, or reachable through O(condor.command_prefix)
  - openstacksdk (for OpenStack clouds)
  - libvirt-python and pycdlib (for libvirt clouds)
  - pynetbox (with O(netbox))
extends_documentation_fragment:
  - hepinfra.cloud.clouds
  - hepinfra.cloud.scale
attributes:
  check_mode:
    support: full
    description: Reads and decides without the lock, and reports what it would launch and retire; writes no history.
  diff_mode:
    support: none
    description: The result lists every launch, drain and deletion by name.
options:
  user_data:
    description:
      - The parts of the workers' user-data, as the P(hepinfra.cloud.user_data#filter) filter takes them (see
        M(hepinfra.cloud.worker)).
    type: list
    elements: dict
    default: []
  user_data_context:
    description:
      - More variables for the user-data templates, for example C(condor_config) from the
        P(hepinfra.cloud.htcondor#role) role's C(execute_config) entry point.
    type: dict
    default: {}
  max_lifetime:
    description: Seconds a new worker may live; its token expires no later.
    type: int
    default: 604800
  drain_wait:
    description: Seconds to wait, after draining idle workers, to delete them in the same cycle; V(0) leaves it to the next.
    type: int
    default: 60
  parallel:
    description: Launches and deletions at once per cloud.
    type: int
    default: 8
  audit_log:
    description: The file every launch, drain and deletion is appended to (JSON lines), as in M(hepinfra.cloud.worker).
    type: path
    default: ~/.local/state/hepinfra-cloud/worker-audit.jsonl
  history:
    description:
      - The file each cycle appends one JSON line to (time, duration, idle and running jobs per group, workers per
        cloud and state, launches per cloud and group, drains, deletions, shortfall, unfit jobs, errors), for the
        status report. An empty string writes none.
    type: path
    default: ~/.local/state/hepinfra-cloud/scale-history.jsonl
  lock_file:
    description: The file the cycle locks (C(flock)) on the host the module runs on.
    type: path
    default: ~/.local/state/hepinfra-cloud/scale.lock
  lock_timeout:
    description: Seconds to wait for another cycle's lock before failing.
    type: int
    default: 900
  netbox:
    description: Register each new worker in NetBox and remove it on deletion, as M(hepinfra.cloud.worker) does.
    type: dict
    suboptions:
      url:
        description: The NetBox URL.
        type: str
        required: true
      token:
        description: A NetBox API token allowed to add and delete virtual machines.
        type: str
        required: true
      cluster:
        description: The NetBox cluster the virtual machines belong to.
        type: str
        required: true
      role:
        description: The device role slug given to the virtual machines.
        type: str
      validate_certs:
        description: Check the server's TLS certificate.
        type: bool
        default: true
"""

EXAMPLES = r"""
- name: One scaling cycle for ATLAS and Belle II
  hepinfra.cloud.scale:
    clouds: "{{ hepinfra_clouds }}"
    groups:
      - name: atlas
        accounting_groups: [group_atlas]
        image: worker-el9
      - name: belle
        accounting_groups: [group_belle]
        clouds: [openstack-a]
        image: worker-el9
    flavors:
      openstack-a: [m1.large, m1.xlarge]
    policy:
      keep_alive: 600
      max_starting: 20
      max_launches: 50
    user_data:
      - type: cloud-config
        content: "{{ lookup('ansible.builtin.file', 'worker.cfg') }}"
    user_data_context:
      condor_config: "{{ htcondor_execute_config }}"
    condor:
      trust_domain: cm.example.org
      central_manager: cm.example.org
  delegate_to: cm.example.org
"""

RETURN = r"""
jobs:
  description: Per scaled group, its idle and running jobs.
  returned: always
  type: dict
unmatched_jobs:
  description: Idle jobs of no scaled group.
  returned: always
  type: int
schedds:
  description: Per schedd, whether it answered, and its idle and running jobs.
  returned: always
  type: dict
workers:
  description: Per cloud, the scaled groups' workers by state at the start of the cycle.
  returned: always
  type: dict
clouds:
  description: Per cloud, whether it answered, its flavors for the decision, its usage and its limits.
  returned: always
  type: dict
plan:
  description: The decision, as M(hepinfra.cloud.demand_info) returns it.
  returned: always
  type: dict
shortfall:
  description: Per group, jobs that fit a flavor but found no room.
  returned: always
  type: dict
unfit:
  description: Per group, jobs no flavor fits.
  returned: always
  type: dict
launched:
  description: Names of the workers launched.
  returned: always
  type: list
  elements: str
drained:
  description: Names of the workers drained.
  returned: always
  type: list
  elements: str
deleted:
  description: Names of the workers deleted.
  returned: always
  type: list
  elements: str
errors:
  description: What failed (a schedd, a cloud, a single launch or deletion).
  returned: always
  type: list
  elements: str
lock:
  description: The lock file and how many seconds the cycle waited for it.
  returned: when not in check mode
  type: dict
history:
  description: The line appended to O(history), or null.
  returned: always
  type: dict
duration:
  description: Seconds the cycle took once it held the lock.
  returned: always
  type: float
"""

import time

from ansible_collections.hepinfra.cloud.plugins.module_utils import _scale_task as S, _worker_task as T, _workers as W
from ansible_collections.hepinfra.cloud.plugins.module_utils._base import HepinfraError, HepinfraModule, optional_import


class ScaleModule(HepinfraModule):
    argument_spec = dict(
        user_data=dict(type="list", elements="dict", default=[]),
        user_data_context=dict(type="dict", default={}),
        max_lifetime=dict(type="int", default=604800),
        drain_wait=dict(type="int", default=60),
        parallel=dict(type="int", default=8),
        audit_log=dict(type="path", default="~/.local/state/hepinfra-cloud/worker-audit.jsonl"),
        history=dict(type="path", default="~/.local/state/hepinfra-cloud/scale-history.jsonl"),
        lock_file=dict(type="path", default="~/.local/state/hepinfra-cloud/scale.lock"),
        lock_timeout=dict(type="int", default=900),
        netbox=dict(type="dict", options=T.NETBOX_OPTIONS),
    )
    shared_specs = ("clouds", "scale")

    def _check(self) -> None:
        params = self.params
        for key in ("max_lifetime", "parallel"):
            if params[key] < 1:
                raise HepinfraError("%s must be 1 or more" % key)
        for key in ("drain_wait", "lock_timeout"):
            if params[key] < 0:
                raise HepinfraError("%s must be 0 or more" % key)
        T.check_tokens(params["condor"], params["max_lifetime"])
        S.check(params)

    def _settings(self, groups: dict[str, S.Group]) -> dict[str, T.LaunchSettings]:
        params = self.params
        condor = params["condor"]
        netbox = T.NetBoxRegistry(params["netbox"], optional_import("pynetbox")[0]) if params["netbox"] else None
        audit = W.AuditLog(params["audit_log"], W.actor())
        return {name: T.LaunchSettings(
            group=name, config=group.config, parts=params["user_data"], context=params["user_data_context"],
            max_lifetime=params["max_lifetime"], token_lifetime=condor["token_lifetime"] or params["max_lifetime"],
            condor=S.condor_of(params), tokens=condor["tokens"], collector=True,
            central_manager=condor["central_manager"], parallel=params["parallel"], audit=audit,
            no_log=self.module.no_log_values.add, netbox=netbox) for name, group in groups.items()}

    def run(self) -> dict:
        params = self.params
        self._check()
        libraries = {name: optional_import(name)[0] for name in S.LIBRARIES}
        if self.check_mode:
            cycle = S.read(params, libraries, time.time())
            T.close_all(list(cycle.runs.values()))
            result = S.report(cycle, applied=False, now=time.time())
            result.pop("launched_per_cloud")
            for warning in cycle.warnings:
                self.module.warn(warning)
            plan = cycle.plan
            return {"changed": bool(plan.launches or plan.retire), **result, "history": None}
        history = None
        with S.CycleLock(params["lock_file"], params["lock_timeout"]) as lock:
            now = time.time()
            cycle = S.read(params, libraries, now)
            try:
                settings = self._settings(cycle.groups)
                S.apply(cycle, settings, params, now)
            finally:
                T.close_all(list(cycle.runs.values()))
            done = time.time()
            result = S.report(cycle, applied=True, now=done)
            result["lock_waited"] = round(lock.waited, 3)
            if params["history"]:
                history = S.history_line(result, done)
                try:
                    S.append_history(params["history"], history)
                except OSError as exc:
                    cycle.errors.append("history %s: %s" % (params["history"], exc))
                    result["errors"] = list(cycle.errors)
        for warning in cycle.warnings:
            self.module.warn(warning)
        audit = next(iter(settings.values())).audit
        changed = bool(result["launched"] or result["drained"] or result["deleted"])
        result.pop("launched_per_cloud")
        result.update(changed=changed, history=history, lock={"file": params["lock_file"], "waited": result.pop("lock_waited")})
        if audit.errors:
            self.fail("the audit log %s could not be written (the actions were done; their records are in the result): %s"
                      % (params["audit_log"], "; ".join(audit.errors)), **result)
        if result["errors"]:
            self.fail("the scaling cycle had %d failure%s: %s" % (len(result["errors"]), "" if len(result["errors"]) == 1 else "s",
                                                                  "; ".join(result["errors"])), **result)
        return result


def main() -> None:
    ScaleModule().execute()


if __name__ == "__main__":
    main()
