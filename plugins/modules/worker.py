#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hepinfra.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: worker
short_description: Keep a number of ephemeral HTCondor worker VMs on OpenStack and libvirt clouds
version_added: 0.1.0
description:
  - "Declarative: for one O(group) and worker configuration O(config), ensures each cloud of O(placements) runs
    O(placements[].count) workers, launching new ones and retiring surplus ones safely."
  - "Workers are named C(<group>--<cloud>--<uuid>) in lower case (also their host name), and carry their ownership
    in the instance: OpenStack server metadata, or a C(<metadata>) element of the namespace
    C(https://hepinfra.cloud/xmlns/worker/1) in the libvirt domain. The module never touches an instance without
    that mark, even one whose name looks like a worker's; such look-alikes are listed in RV(clouds.foreign)."
  - "Retiring never deletes a busy worker. Instances in error, stopped instances and workers that did not register
    in the pool within O(registration_timeout) are deleted first, whatever the count. Of the healthy workers the
    surplus is taken idle first (a startd with no claimed slot, idle longest first), then workers still starting,
    then busy ones. Registered workers are drained (C(condor_drain -graceful), addressed by slot name so the
    collector brokers the session: no new jobs, running ones finish) and deleted once no job is left on them (all
    slots drained and unclaimed, or gone from the collector): idle ones within O(drain_wait) in the same run, busy
    ones by a later run. Workers past O(max_lifetime) are drained the same way."
  - Each new worker gets its own HTCondor token, minted with C(condor_token_create) for the identity
    C(<identity_prefix><uuid>@<trust_domain>) with only the authorizations an execute node needs and a lifetime of at
    most O(max_lifetime). It travels only inside the worker's user-data, in C(/etc/condor/tokens.d/hepinfra-worker)
    (mode 0600); it is never in the task's result or log.
  - "The user-data is built from O(user_data) (parts as for the P(hepinfra.cloud.user_data#filter) filter,
    rendered with the worker's context: C(hostname), C(uuid), C(group), C(config), C(cloud), C(flavor), C(image),
    C(central_manager), C(token) and O(user_data_context)), plus two files the module adds: the token, and
    C(/etc/condor/config.d/55-hepinfra-worker.conf) advertising C(HepinfraWorkerUuid), C(HepinfraGroup),
    C(HepinfraCloud), C(HepinfraConfig) and C(HepinfraFlavor) in every slot. It is compressed and checked against
    the cloud's user-data limit."
  - Every launch, drain and deletion is appended as one JSON line to O(audit_log) (time, who, event, cloud, group,
    worker, instance, flavor, image, token identity and expiry, reason); so is a launch that failed after its token
    was minted (event C(launch_failed)).
  - Clouds are worked on at once, launches and deletions on one cloud concurrently up to O(parallel). A quota or
    API failure on one cloud is reported in that cloud's entry of RV(clouds) and does not stop the others; the task
    fails at the end naming each cloud with a failure.
  - libvirt clouds get per worker a qcow2 overlay on the current version of O(placements[].image) in the cloud's
    pool (as uploaded by M(hepinfra.cloud.image)), a NoCloud seed ISO volume, and a domain of the cloud's
    C(flavors) size (transient unless the cloud says C(persistent)). Disks of workers whose domain is gone are
    removed.
author:
  - hepinfra.cloud contributors (@hepinfra)
requirements:
  - openstacksdk (for OpenStack clouds)
  - libvirt-python and pycdlib (for libvirt clouds)
  - HTCondor's command line tools where the module runs, or reachable through O(condor.command_prefix)
  - pynetbox (with O(netbox))
extends_documentation_fragment:
  - hepinfra.cloud.clouds
attributes:
  check_mode:
    support: full
    description: Lists the workers and asks the pool, then reports the launches, drains and deletions it would do.
  diff_mode:
    support: full
    description: Shows the worker names on each cloud before and after.
options:
  group:
    description:
      - The group the workers serve (for example a VO or an accounting group). Part of every worker name, so
        lower-case letters, digits and single C(-) only, at most 40 characters.
    type: str
    required: true
  config:
    description:
      - The worker configuration (image, flavor, user-data) these workers follow; recorded in each worker. Workers of
        the same group with another configuration are not counted and not touched.
    type: str
    default: default
  state:
    description:
      - V(present) keeps O(placements[].count) workers per cloud; V(absent) retires all of them (count 0 on the clouds
        of O(placements), or on every enabled cloud when O(placements) is empty), with the same care for busy ones.
    type: str
    default: present
    choices: [present, absent]
  placements:
    description:
      - Per cloud, how many workers and of what kind. Unset fields come from the cloud's C(defaults).
    type: list
    elements: dict
    default: []
    suboptions:
      cloud:
        description: The cloud's name in O(clouds).
        type: str
        required: true
      count:
        description: How many workers (0 or more).
        type: int
        required: true
      flavor:
        description: OpenStack flavor name or ID; for libvirt, a name in the cloud's C(libvirt.flavors).
        type: str
      image:
        description: OpenStack image name or ID; for libvirt, an image name uploaded by M(hepinfra.cloud.image).
        type: str
      network:
        description: The network (OpenStack name or ID; libvirt network name). None when unset on both.
        type: str
      key_name:
        description: OpenStack key pair name.
        type: str
      security_groups:
        description: OpenStack security group names.
        type: list
        elements: str
  user_data:
    description:
      - The parts of the workers' user-data, as the P(hepinfra.cloud.user_data#filter) filter takes them.
    type: list
    elements: dict
    default: []
  user_data_context:
    description:
      - More variables for the user-data templates, for example C(condor_config), the execute-node configuration that
        the P(hepinfra.cloud.htcondor#role) role renders with its C(execute_config) entry point.
    type: dict
    default: {}
  max_lifetime:
    description:
      - Seconds a worker may live. Its token expires no later; past it, the worker is drained and deleted.
    type: int
    default: 604800
  registration_timeout:
    description:
      - Seconds a worker has to register in the pool; an instance older than that without slots in the collector is
        deleted. Not applied when O(condor.collector=false).
    type: int
    default: 1800
  drain_wait:
    description:
      - Seconds to wait, after draining idle workers, for their slots to leave the collector so they are deleted in the
        same run. V(0) leaves that to the next run.
    type: int
    default: 60
  wait:
    description:
      - After launching, wait until the new workers are V(active) on their cloud or V(registered) in the pool
        (their startd is in the collector); V(none) does not wait.
    type: str
    default: none
    choices: [none, active, registered]
  wait_timeout:
    description:
      - Seconds O(wait) waits; workers not there by then fail their cloud.
    type: int
    default: 900
  parallel:
    description:
      - Launches and deletions at once per cloud.
    type: int
    default: 8
  audit_log:
    description:
      - The file every launch, drain and deletion is appended to (JSON lines), on the host the module runs on.
        Several runs may append at once.
    type: path
    default: ~/.local/state/hepinfra-cloud/worker-audit.jsonl
  condor:
    description:
      - How the module reaches the HTCondor pool.
    type: dict
    required: true
    suboptions:
      trust_domain:
        description:
          - The pool's trust domain (the domain of token identities); needed when O(condor.tokens=true).
        type: str
      central_manager:
        description:
          - The central manager's host name as workers reach it; passed to the user-data templates as
            C(central_manager).
        type: str
      command_prefix:
        description:
          - A command the HTCondor tools are run through, for example V([ssh, cm.example.org]). Empty runs them where
            the module runs (for example on the central manager).
        type: list
        elements: str
        default: []
      tokens:
        description:
          - Mint a token per worker. V(false) leaves authentication to the user-data.
        type: bool
        default: true
      collector:
        description:
          - Ask the collector which workers are registered, idle or busy. V(false) (workers outside a pool, tests)
            treats every worker as not registered, so surplus workers are deleted without draining.
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
        description: Seconds a worker token is valid; at most and by default O(max_lifetime).
        type: int
      timeout:
        description: Seconds an HTCondor command may take.
        type: int
        default: 60
  netbox:
    description:
      - Register each new worker in NetBox as a virtual machine of O(netbox.cluster), and remove it again when the
        worker is deleted.
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
- name: Keep 20 ATLAS workers on the site's OpenStack and 4 on the local hypervisor
  hepinfra.cloud.worker:
    clouds: "{{ hepinfra_clouds }}"
    group: atlas
    config: el9-8core
    placements:
      - cloud: openstack-a
        count: 20
        flavor: m1.8core
        image: worker-el9
        network: workers
      - cloud: hv01
        count: 4
        flavor: w8
        image: worker-el9
    user_data:
      - type: cloud-config
        content: "{{ lookup('ansible.builtin.file', 'worker.cfg') }}"
    user_data_context:
      condor_config: "{{ htcondor_execute_config }}"
    condor:
      trust_domain: cm.example.org
      central_manager: cm.example.org
    wait: active
  delegate_to: cm.example.org

- name: Retire every ATLAS worker (busy ones drain first; run again to delete them)
  hepinfra.cloud.worker:
    clouds: "{{ hepinfra_clouds }}"
    group: atlas
    config: el9-8core
    state: absent
    condor:
      trust_domain: cm.example.org
"""

RETURN = r"""
clouds:
  description: Per cloud (by name), what happened.
  returned: always
  type: dict
  contains:
    changed:
      description: Whether anything changed on this cloud.
      type: bool
    failed:
      description: Whether anything failed on this cloud (connection, quota, API, a worker not ready in time).
      type: bool
    error:
      description: What failed, or null.
      type: str
    errors:
      description: Each failure of a single worker (a partial success leaves the others done).
      type: list
      elements: str
    cloud:
      description: The cloud's name.
      type: str
    type:
      description: The cloud's type.
      type: str
    count:
      description: The workers wanted.
      type: int
    launch:
      description: How many workers were launched (in check mode, would be).
      type: int
    before:
      description: Workers of the group and config before the task, by pool state.
      type: dict
    launched:
      description: Names of the workers launched; empty in check mode (see RV(clouds.launch)).
      type: list
      elements: str
    drained:
      description: Names of the workers drained.
      type: list
      elements: str
    deleted:
      description: Names of the workers deleted.
      type: list
      elements: str
    leftovers:
      description: Workers whose libvirt domain was gone and whose disks, unchanged for 10 minutes, were removed (in check mode, would be).
      type: list
      elements: str
    foreign:
      description: Instances with worker-like names the module does not own, left alone.
      type: list
      elements: str
    warnings:
      description: Warnings about this cloud (for example an expiring application credential).
      type: list
      elements: str
workers:
  description:
    - Per worker touched or kept, what happened and why; C(action) is V(launched), V(drain)/V(draining),
      V(delete)/V(deleted), V(keep) or V(failed).
  returned: always
  type: list
  elements: dict
audit:
  description: The audit records this run appended to O(audit_log).
  returned: always
  type: list
  elements: dict
"""

import time

from ansible_collections.hepinfra.cloud.plugins.module_utils import _clouds, _worker_task as T, _workers as W
from ansible_collections.hepinfra.cloud.plugins.module_utils._base import HepinfraError, HepinfraModule, optional_import


class WorkerModule(HepinfraModule):
    argument_spec = dict(
        group=dict(type="str", required=True),
        config=dict(type="str", default="default"),
        state=dict(type="str", default="present", choices=["present", "absent"]),
        placements=dict(type="list", elements="dict", default=[], options=dict(
            cloud=dict(type="str", required=True),
            count=dict(type="int", required=True),
            flavor=dict(type="str"),
            image=dict(type="str"),
            network=dict(type="str"),
            key_name=dict(type="str", no_log=False),
            security_groups=dict(type="list", elements="str"),
        )),
        user_data=dict(type="list", elements="dict", default=[]),
        user_data_context=dict(type="dict", default={}),
        max_lifetime=dict(type="int", default=604800),
        registration_timeout=dict(type="int", default=1800),
        drain_wait=dict(type="int", default=60),
        wait=dict(type="str", default="none", choices=["none", "active", "registered"]),
        wait_timeout=dict(type="int", default=900),
        parallel=dict(type="int", default=8),
        audit_log=dict(type="path", default="~/.local/state/hepinfra-cloud/worker-audit.jsonl"),
        condor=dict(type="dict", required=True, options=dict(T.CONDOR_OPTIONS, collector=dict(type="bool", default=True))),
        netbox=dict(type="dict", options=T.NETBOX_OPTIONS),
    )
    shared_specs = ("clouds",)

    def _check(self) -> None:
        params = self.params
        W.check_group(params["group"])
        W.check_config(params["config"])
        for key in ("max_lifetime", "wait_timeout", "parallel"):
            if params[key] < 1:
                raise HepinfraError("%s must be 1 or more" % key)
        for key in ("registration_timeout", "drain_wait"):
            if params[key] < 0:
                raise HepinfraError("%s must be 0 or more" % key)
        for index, placement in enumerate(params["placements"]):
            if placement["count"] < 0:
                raise HepinfraError("placements[%d] (%s): count must be 0 or more" % (index, placement["cloud"]))
        names = [placement["cloud"] for placement in params["placements"]]
        if len(set(names)) != len(names):
            raise HepinfraError("placements name a cloud twice: %s" % ", ".join(sorted({n for n in names if names.count(n) > 1})))
        condor = params["condor"]
        T.check_tokens(condor, params["max_lifetime"])
        if params["wait"] == "registered" and not condor["collector"]:
            raise HepinfraError("wait=registered needs the collector (condor.collector=true)")

    def _placements(self) -> list[T.Placement]:
        params = self.params
        clouds = _clouds.normalize(params["clouds"])
        if params["placements"]:
            chosen = _clouds.select(clouds, [p["cloud"] for p in params["placements"]], include_disabled=True)
            by_name = {p["cloud"]: p for p in params["placements"]}
        else:
            if params["state"] == "present":
                raise HepinfraError("placements is empty", hint="Name each cloud and its count, or use state=absent")
            chosen, by_name = _clouds.select(clouds, None), {}
        result = []
        for cloud in chosen:
            raw = by_name.get(cloud.name, {})
            count = raw.get("count", 0) if params["state"] == "present" and cloud.enabled else 0
            defaults = cloud.defaults
            placement = T.Placement(
                cloud=cloud, count=count,
                flavor=raw.get("flavor") or defaults.get("flavor"), image=raw.get("image") or defaults.get("image"),
                network=raw.get("network") or defaults.get("network") or cloud.libvirt.get("network"),
                key_name=raw.get("key_name") or defaults.get("key_name"),
                security_groups=raw.get("security_groups") or defaults.get("security_groups") or [])
            if count and not (placement.flavor and placement.image):
                raise HepinfraError("placement on cloud %s needs a flavor and an image (none set there or in the "
                                    "cloud's defaults)" % cloud.name)
            if count and cloud.type == "openstack" and not placement.network:
                raise HepinfraError("placement on cloud %s needs a network (none set there or in the cloud's defaults): "
                                    "a worker without one cannot reach the pool" % cloud.name)
            if raw:
                W.check_cloud_name(params["group"], cloud.name)
            result.append(placement)
        return result

    def run(self) -> dict:
        params = self.params
        self._check()
        placements = self._placements()
        condor_params = params["condor"]
        condor = T.condor_of(condor_params)
        libraries = {name: optional_import(name)[0] for name in ("openstack", "libvirt", "pycdlib")}
        netbox = None
        if params["netbox"] and not self.check_mode:
            netbox = T.NetBoxRegistry(params["netbox"], optional_import("pynetbox")[0])
        settings = T.LaunchSettings(
            group=params["group"], config=params["config"], parts=params["user_data"],
            context=params["user_data_context"], max_lifetime=params["max_lifetime"],
            token_lifetime=condor_params["token_lifetime"] or params["max_lifetime"],
            condor=condor, tokens=condor_params["tokens"], collector=condor_params["collector"],
            central_manager=condor_params["central_manager"],
            parallel=params["parallel"], audit=W.AuditLog(params["audit_log"], W.actor()),
            no_log=self.module.no_log_values.add, netbox=netbox)
        runs = [T.CloudRun(placement) for placement in placements]
        now = time.time()
        try:
            T.connect_and_list(runs, libraries, params["group"], params["config"])
            pool_error = T.attach_pool([r for r in runs if r.error is None],
                                       condor if condor_params["collector"] else None)
            if pool_error:
                # Without the pool's view nothing can be retired safely: report and change nothing.
                raise HepinfraError(pool_error, hint="Fix access to the collector (condor.command_prefix), or set "
                                    "condor.collector=false for workers outside a pool")
            timeout = params["registration_timeout"] if condor_params["collector"] else float("inf")
            for run in runs:
                if run.error is None:
                    run.plan = W.plan_scale(run.workers, run.placement.count, now, timeout)
            before = {run.name: sorted(w.name for w in run.workers) for run in runs}
            if not self.check_mode:
                T.parallel([r for r in runs if r.error is None],
                           lambda run: T.apply(run, settings, params["drain_wait"]), len(runs))
                if params["wait"] != "none":
                    T.wait_for(runs, condor if condor_params["collector"] else None, params["group"], params["wait"],
                               params["wait_timeout"])
        finally:
            T.close_all(runs)
        return self._result(runs, before, settings)

    def _result(self, runs, before, settings) -> dict:
        clouds, workers = {}, []
        changed = False
        for run in runs:
            report = T.cloud_report(run, applied=not self.check_mode)
            clouds[run.name] = report
            changed = changed or report["changed"]
            workers.extend(T.worker_reports(run, applied=not self.check_mode))
            for warning in report["warnings"]:
                self.module.warn(warning)
        after = {}
        for run in runs:
            gone = set(clouds[run.name]["deleted"])
            after[run.name] = sorted([name for name in before.get(run.name, []) if name not in gone]
                                     + clouds[run.name]["launched"])
        result = self.result(changed, before=before, after=after, clouds=clouds, workers=workers,
                             audit=settings.audit.records)
        failed = [name for name, report in clouds.items() if report["failed"]]
        if settings.audit.errors:
            self.fail("the audit log %s could not be written (the actions were done; their records are in the result): %s"
                      % (self.params["audit_log"], "; ".join(settings.audit.errors)),
                      **{k: v for k, v in result.items() if k != "changed"}, changed=changed)
        if failed:
            summary = "; ".join("%s: %s" % (name, clouds[name]["error"] or "; ".join(clouds[name]["errors"]))
                                for name in failed)
            self.fail("workers of %s failed on %d of %d clouds: %s" % (self.params["group"], len(failed), len(clouds), summary),
                      **{k: v for k, v in result.items() if k != "changed"}, changed=changed)
        return result


def main() -> None:
    WorkerModule().execute()


if __name__ == "__main__":
    main()
