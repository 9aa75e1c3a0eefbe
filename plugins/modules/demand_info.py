#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hepinfra.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: demand_info
short_description: Read the HTCondor queues, the workers and the clouds, and decide what a scaling cycle would launch and retire
version_added: 0.1.0
description:
  - Reads the idle and running jobs of the schedds (C(condor_q), request attributes evaluated), every worker that
    M(hepinfra.cloud.worker) owns on every enabled cloud with its pool state (the collector), each cloud's flavors and,
    where the cloud says C(limits.count_project_usage), what the whole project or hypervisor uses. Then it decides,
    without changing anything, what M(hepinfra.cloud.scale) would do in this cycle.
  - "Idle jobs are grouped by what they request (CPUs, memory, disk, group, target clouds) and covered first by the
    unclaimed room of the group's workers (idle, busy with room left, or still starting). The rest goes to the clouds
    in priority order, each on its smallest flavor that fits a job, within the cloud's limits (C(limits.cores),
    C(limits.ram_mb), C(limits.instances), counting what is already used there) and the throttles of O(policy)."
  - Jobs no flavor of an allowed cloud can fit are reported in RV(plan.unfit) and never launched for; jobs that fit but
    found no room are RV(plan.shortfall).
  - "The retire plan: workers idle longer than O(policy.keep_alive) after their last job, not registered within
    O(policy.come_alive), registered without a job for O(policy.job_alive), past their maximum lifetime, or in error. A
    busy or draining worker is never in it, unless its instance is in error or stopped (then it is drained, and not
    deleted while a job runs)."
  - Disabled clouds are read too, so that their workers are still retired; they get no launch, and one that does not
    answer is only a warning. A cloud that does not answer is left out of the decision altogether.
  - The time of a worker's last job is what M(hepinfra.cloud.scale) records in the instance while it sees the worker
    busy; a worker never seen busy counts from its registration.
author:
  - hepinfra.cloud contributors (@hepinfra)
requirements:
  - HTCondor's command line tools where the module runs, or reachable through O(condor.command_prefix)
  - openstacksdk (for OpenStack clouds)
  - libvirt-python (for libvirt clouds)
extends_documentation_fragment:
  - hepinfra.cloud.clouds
  - hepinfra.cloud.scale
attributes:
  check_mode:
    support: full
    description: Reads only; runs the same in check mode.
  diff_mode:
    support: none
    description: Changes nothing, so there is no diff.
"""

EXAMPLES = r"""
- name: What would the next scaling cycle do?
  hepinfra.cloud.demand_info:
    clouds: "{{ hepinfra_clouds }}"
    groups:
      - name: atlas
        accounting_groups: [group_atlas]
      - name: belle
        accounting_groups: [group_belle]
        clouds: [openstack-a]
    policy:
      keep_alive: 600
      max_starting: 10
  delegate_to: cm.example.org
  register: demand

- name: Show the jobs no flavor fits
  ansible.builtin.debug:
    var: demand.plan.unfit
"""

RETURN = r"""
jobs:
  description: Per scaled group, its idle and running jobs.
  returned: always
  type: dict
  sample: {"atlas": {"idle": 120, "running": 800}}
unmatched_jobs:
  description: Idle jobs of no scaled group (no C(HepinfraGroup), no mapped accounting group).
  returned: always
  type: int
schedds:
  description: Per schedd, whether it answered, and its idle and running jobs.
  returned: always
  type: dict
workers:
  description: Per cloud, the scaled groups' workers by state (V(starting), V(idle), V(busy), V(draining), V(error)).
  returned: always
  type: dict
clouds:
  description:
    - Per cloud, whether it answered, the flavors the decision may use, what is used there (the site's workers, or the
      whole project with C(limits.count_project_usage)) and the limits in force (the cloud's, capped by the project's
      quota where it is read).
  returned: always
  type: dict
plan:
  description: The decision.
  returned: always
  type: dict
  contains:
    launch:
      description: Workers to launch, per cloud, group and flavor, and the job shape they are for.
      type: list
      elements: dict
    retire:
      description: Workers to retire, and why (V(idle), V(never registered), V(never ran a job), V(lifetime), V(error)).
      type: list
      elements: dict
    covered:
      description: Job shapes the group's existing, starting or just planned workers (room left on them) will take.
      type: list
      elements: dict
    shortfall:
      description: Job shapes that fit a flavor but found no room within the limits and throttles.
      type: list
      elements: dict
    unfit:
      description: Job shapes no flavor of an allowed cloud fits; nothing is launched for them.
      type: list
      elements: dict
    held_back:
      description: Groups that got no launch because they have O(policy.idle_enough) idle workers, and why.
      type: dict
shortfall:
  description: Per group, the jobs of RV(plan.shortfall).
  returned: always
  type: dict
unfit:
  description: Per group, the jobs of RV(plan.unfit).
  returned: always
  type: dict
errors:
  description: What did not answer (a schedd, a cloud); the decision was made without it.
  returned: always
  type: list
  elements: str
"""

import time

from ansible_collections.hepinfra.cloud.plugins.module_utils import _scale_task as S, _worker_task as T
from ansible_collections.hepinfra.cloud.plugins.module_utils._base import HepinfraModule, optional_import


class DemandInfoModule(HepinfraModule):
    argument_spec: dict = {}
    shared_specs = ("clouds", "scale")

    def run(self) -> dict:
        libraries = {name: optional_import(name)[0] for name in S.LIBRARIES}
        now = time.time()
        cycle = S.read(self.params, libraries, now)
        T.close_all(list(cycle.runs.values()))
        result = S.report(cycle, applied=False, now=time.time())
        for error in cycle.errors + cycle.warnings:
            self.module.warn(error)
        for key in ("launched", "drained", "deleted", "launched_per_cloud", "duration"):
            result.pop(key)
        return {"changed": False, **result}


def main() -> None:
    DemandInfoModule().execute()


if __name__ == "__main__":
    main()
