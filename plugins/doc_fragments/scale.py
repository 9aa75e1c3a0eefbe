# -*- coding: utf-8 -*-
# Copyright: hepinfra.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    """What the scaling decision reads (module_utils/_scale_task.py holds the spec)."""

    DOCUMENTATION = r"""
options:
  groups:
    description:
      - The worker groups the cycle scales. A job belongs to a group by its C(HepinfraGroup) attribute, or else by its
        accounting group (C(AcctGroup)), mapped by the longest prefix in O(groups[].accounting_groups). Jobs of no
        group listed here are counted in RV(unmatched_jobs) and never launched for.
    type: list
    elements: dict
    required: true
    suboptions:
      name:
        description:
          - The group, as in M(hepinfra.cloud.worker) (lower-case letters, digits and single C(-); part of every worker
            name).
        type: str
        required: true
      config:
        description:
          - The worker configuration of the group's workers. Only workers of this group and configuration are counted
            as its capacity and retired; others are left alone (they still count against the clouds' limits).
          - Every enabled cloud the group may use must be able to host its workers (a valid worker name
            C(<group>--<cloud>--<uuid>), an image, and on OpenStack the cloud's C(defaults.network)); the cycle fails
            before doing anything otherwise.
        type: str
        default: default
      accounting_groups:
        description:
          - Accounting groups (C(AcctGroup)) whose jobs belong to this group, matched as dotted prefixes
            (V(group_atlas) takes C(group_atlas.prod.alice)).
        type: list
        elements: str
        default: []
      clouds:
        description:
          - The clouds this group may launch on; every enabled cloud when empty. A job's C(HepinfraClouds) attribute (a
            comma-separated list of cloud names) narrows it further.
        type: list
        elements: str
        default: []
      image:
        description:
          - The image the group's workers boot; the cloud's C(defaults.image) when unset.
        type: str
  flavors:
    description:
      - Per cloud name, the flavor names the decision may choose from (the smallest that fits a job wins, by fewest
        vCPUs, then least RAM).
      - A cloud not named here offers every flavor of its C(libvirt.flavors) (libvirt), or its C(defaults.flavor), or
        when that is unset every flavor the project sees (OpenStack).
      - A flavor's memory for jobs is its RAM less O(policy.memory_reserve_mb), as the startd reports a little less
        memory than the flavor has; cloud limits count the whole RAM.
    type: dict
    default: {}
  schedds:
    description:
      - The schedds whose queues are read (C(condor_q -name)). The schedd C(condor_q) finds by default when empty.
      - A schedd that does not answer is reported in RV(schedds) and its jobs are missing from the demand; the cycle
        goes on with the others and fails at the end.
    type: list
    elements: str
    default: []
  policy:
    description: When to launch and when to retire.
    type: dict
    default: {}
    suboptions:
      keep_alive:
        description: Seconds a worker may stay idle after its last job before it is retired.
        type: int
        default: 600
      come_alive:
        description: Seconds a launched worker has to register in the pool; after that it is deleted.
        type: int
        default: 1800
      job_alive:
        description: Seconds a registered worker may wait for its first job before it is retired.
        type: int
        default: 1800
      max_starting:
        description:
          - At most this many workers of the scaled groups starting (launched, not yet registered) per cloud; unlimited
            when unset.
        type: int
      max_launches:
        description: At most this many launches per cycle over all clouds; unlimited when unset.
        type: int
      idle_enough:
        description:
          - A group with this many idle workers gets no launch this cycle (its jobs are reported as shortfall with the
            reason in RV(hepinfra.cloud.demand_info#module:plan.held_back)). Unset, idle workers only count by their
            free room.
        type: int
      memory_reserve_mb:
        description:
          - MiB of a flavor's RAM that its workers do not offer jobs (the guest kernel's share). Jobs are fitted, and
            starting workers counted, with the rest; a reserve too small makes jobs that ask for nearly all of a
            flavor look covered until the worker registers, and then launched for again.
          - Unset, 5% of the flavor's RAM and at least 64 MiB.
        type: int
  condor:
    description: How the modules reach the HTCondor pool (schedds, collector, and the token signing key for launches).
    type: dict
    default: {}
    suboptions:
      command_prefix:
        description:
          - A command the HTCondor tools are run through, for example V([ssh, cm.example.org]). Empty runs them where
            the module runs (for example on the central manager).
        type: list
        elements: str
        default: []
      timeout:
        description: Seconds an HTCondor command may take.
        type: int
        default: 60
      trust_domain:
        description: The pool's trust domain (the domain of worker token identities); needed to launch with tokens.
        type: str
      central_manager:
        description: The central manager's host name as workers reach it; passed to the user-data templates.
        type: str
      tokens:
        description: Mint a token per new worker (as M(hepinfra.cloud.worker) does).
        type: bool
        default: true
      identity_prefix:
        description: Worker token identities are C(<identity_prefix><uuid>@<trust_domain>).
        type: str
        default: worker-
      authz:
        description: The authorizations of worker tokens; only those an execute node needs are allowed.
        type: list
        elements: str
        default: [ADVERTISE_MASTER, ADVERTISE_STARTD, READ]
        choices: [ADVERTISE_MASTER, ADVERTISE_STARTD, READ]
      signing_key:
        description: The signing key name (C(condor_token_create -key)); HTCondor's default when unset.
        type: str
      token_lifetime:
        description: Seconds a worker token is valid; at most and by default the worker's maximum lifetime.
        type: int
"""
