# -*- coding: utf-8 -*-
# Copyright: hepinfra.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""One worker task over several clouds: list, plan, retire, launch, wait; each cloud on its own.

A failure on one cloud (connection, quota, API) is recorded in that cloud's result and never
stops the others. Used by the worker and worker_info modules.

Private to this collection: the leading underscore means the API may change between releases.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

from ansible_collections.hepinfra.cloud.plugins.module_utils import _userdata
from ansible_collections.hepinfra.cloud.plugins.module_utils import _worker_clouds as C
from ansible_collections.hepinfra.cloud.plugins.module_utils import _workers as W
from ansible_collections.hepinfra.cloud.plugins.module_utils._base import HepinfraError

TOKEN_FILE = "/etc/condor/tokens.d/hepinfra-worker"
ATTRIBUTES_FILE = "/etc/condor/config.d/55-hepinfra-worker.conf"


# How the worker and scale modules reach the pool and mint worker tokens (option specs both use).
CONDOR_OPTIONS: dict[str, dict[str, Any]] = {
    "trust_domain": {"type": "str"},
    "central_manager": {"type": "str"},
    "command_prefix": {"type": "list", "elements": "str", "default": []},
    "tokens": {"type": "bool", "default": True},
    "identity_prefix": {"type": "str", "default": "worker-"},
    "authz": {"type": "list", "elements": "str", "default": list(W.TOKEN_AUTHZ), "choices": list(W.TOKEN_AUTHZ)},
    "signing_key": {"type": "str", "no_log": False},
    "token_lifetime": {"type": "int", "no_log": False},
    "timeout": {"type": "int", "default": 60},
}

# Registering workers in NetBox.
NETBOX_OPTIONS: dict[str, dict[str, Any]] = {
    "url": {"type": "str", "required": True},
    "token": {"type": "str", "required": True, "no_log": True},
    "cluster": {"type": "str", "required": True},
    "role": {"type": "str"},
    "validate_certs": {"type": "bool", "default": True},
}


def condor_of(options: dict[str, Any]) -> W.Condor:
    """The HTCondor tools as the module's condor options describe them."""
    return W.Condor(prefix=options["command_prefix"], trust_domain=options["trust_domain"] or "",
                    identity_prefix=options["identity_prefix"], authz=tuple(options["authz"]), key=options["signing_key"],
                    timeout=options["timeout"])


def check_tokens(options: dict[str, Any], max_lifetime: int) -> None:
    """Token settings that the argument spec cannot check."""
    if options["tokens"] and not options["trust_domain"]:
        raise HepinfraError("condor.trust_domain is needed to mint worker tokens",
                            hint="Set it, or condor.tokens=false when the user-data authenticates workers")
    lifetime = options["token_lifetime"]
    if lifetime is not None and not 0 < lifetime <= max_lifetime:
        raise HepinfraError("condor.token_lifetime must be between 1 and max_lifetime (%d)" % max_lifetime)


@dataclass
class Placement:
    """Workers of the task's group and config on one cloud."""

    cloud: Any
    count: int
    flavor: str | None = None
    image: str | None = None
    network: str | None = None
    key_name: str | None = None
    security_groups: list[str] = field(default_factory=list)


@dataclass
class CloudRun:
    placement: Placement
    provider: C.Provider | None = None
    workers: list[W.Worker] = field(default_factory=list)
    plan: W.Plan | None = None
    error: str | None = None
    errors: list[str] = field(default_factory=list)         # per-worker failures (partial success)
    events: list[dict[str, Any]] = field(default_factory=list)
    launched: list[W.Worker] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)    # disks of workers whose instance is gone
    removed: list[str] = field(default_factory=list)      # ... of those, removed
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def name(self) -> str:
        return self.placement.cloud.name

    def event(self, worker: W.Worker, action: str, reason: str, **extra: Any) -> None:
        entry = {"name": worker.name, "uuid": worker.uuid, "action": action, "reason": reason,
                 "pool_state": worker.pool_state, "cloud_state": worker.cloud_state}
        entry.update(extra)
        with self.lock:
            self.events.append(entry)


def parallel(items: list[Any], function: Callable[[Any], Any], limit: int) -> None:
    """Run function over items on up to limit threads; exceptions are the function's to handle."""
    if not items:
        return
    with ThreadPoolExecutor(max_workers=max(1, min(limit, len(items)))) as pool:
        list(pool.map(function, items))


def connect_and_list(runs: list[CloudRun], libraries: dict[str, Any], group: str, config: str | None) -> None:
    """Connect to every cloud at once and list the owned workers of the group (and config)."""
    def one(run: CloudRun) -> None:
        try:
            run.provider = C.provider(run.placement.cloud, libraries)
            run.provider.connect()
            workers = run.provider.workers(group)
            run.workers = [w for w in workers if config is None or w.config == config]
            live = {w.name for w in workers}
            run.leftovers = run.provider.leftovers(group, live)
        except HepinfraError as exc:
            run.error = str(exc)
        except Exception as exc:  # pylint: disable=broad-exception-caught
            run.error = "cloud %s: %s: %s" % (run.name, type(exc).__name__, exc)
    parallel(runs, one, len(runs))


def close_all(runs: list[CloudRun]) -> None:
    for run in runs:
        if run.provider is not None:
            try:
                run.provider.close()
            except Exception:  # pylint: disable=broad-exception-caught
                pass


def attach_pool(runs: list[CloudRun], condor: W.Condor | None) -> str | None:
    """Ask the collector once and give every worker its slots; returns an error or None."""
    if condor is None:
        for run in runs:
            W.attach_slots(run.workers, [])
        return None
    try:
        slots = condor.slots()
    except HepinfraError as exc:
        return "the pool's collector: %s" % exc
    for run in runs:
        W.attach_slots(run.workers, slots)
    return None


@dataclass
class LaunchSettings:
    group: str
    config: str
    parts: list[Any]
    context: dict[str, Any]
    max_lifetime: int
    token_lifetime: int
    condor: W.Condor
    tokens: bool            # mint a token per worker
    collector: bool         # the pool is asked (drains and their wait need it)
    central_manager: str | None
    parallel: int
    audit: W.AuditLog
    no_log: Callable[[str], None]
    netbox: Any = None


def worker_parts(settings: LaunchSettings, worker_uuid: str, name: str, cloud: str, flavor: str,
                 token: str) -> list[Any]:
    """The module's own parts (token and identifying startd attributes) after the user's."""
    attributes = {"HepinfraWorkerUuid": worker_uuid, "HepinfraGroup": settings.group, "HepinfraCloud": cloud,
                  "HepinfraConfig": settings.config, "HepinfraFlavor": flavor}
    config = "".join('%s = "%s"\n' % (key, value) for key, value in attributes.items())
    config += "STARTD_ATTRS = $(STARTD_ATTRS) %s\n" % " ".join(attributes)
    # A graceful drain (retiring a busy worker) lets running jobs finish within their retirement
    # time; HTCondor's default of 0 would evict them at once.
    config += "MAXJOBRETIREMENTTIME = %d\n" % settings.max_lifetime
    parts = list(settings.parts)
    parts.append({"type": "file", "path": ATTRIBUTES_FILE, "content": "# hepinfra.cloud worker %s\n%s" % (name, config),
                  "template": False})
    if token:
        parts.append({"type": "file", "path": TOKEN_FILE, "content": token + "\n", "permissions": "0600",
                      "owner": "root:root", "template": False})
    return parts


def launch_one(run: CloudRun, settings: LaunchSettings, resolved: dict[str, Any]) -> None:
    """Mint a token, build the user-data and create one worker; failures land in run.errors."""
    placement, cloud = run.placement, run.placement.cloud
    worker_uuid = W.new_uuid()
    name = W.worker_name(settings.group, cloud.name, worker_uuid)
    now = time.time()
    token, identity = "", ""
    worker = W.Worker(name=name, uuid=worker_uuid, cloud=cloud.name, group=settings.group, config=settings.config,
                      instance_id="", cloud_state=W.BUILDING, flavor=placement.flavor or "", image=placement.image or "",
                      created=now, expires=now + settings.max_lifetime)
    try:
        if settings.tokens:
            identity = settings.condor.identity(worker_uuid)
            token = settings.condor.mint(worker_uuid, settings.token_lifetime)
            settings.no_log(token)
        worker.token_identity = identity
        context = dict(settings.context)
        context.update({"hostname": name, "uuid": worker_uuid, "group": settings.group, "config": settings.config,
                        "cloud": cloud.name, "flavor": placement.flavor, "image": placement.image,
                        "central_manager": settings.central_manager, "token": token})
        user_data = _userdata.build_user_data(
            worker_parts(settings, worker_uuid, name, cloud.name, placement.flavor or "", token), context,
            limit=cloud.user_data.get("max_bytes"), limit_after_base64=bool(cloud.user_data.get("limit_after_base64")),
            compression="auto" if cloud.user_data.get("compression", True) else False)
        metadata = W.ownership(settings.group, settings.config, cloud.name, worker_uuid, placement.flavor or "",
                               placement.image or "", now, now + settings.max_lifetime, identity)
        spec = C.Launch(name=name, uuid=worker_uuid, metadata=metadata, user_data=user_data.data,
                        flavor=placement.flavor or "", image=placement.image or "", network=placement.network,
                        key_name=placement.key_name, security_groups=placement.security_groups)
        created = run.provider.launch(spec, resolved)
    except Exception as exc:  # pylint: disable=broad-exception-caught
        # One worker's failure (quota, API, a bad part) never stops the others.
        text = str(exc) if isinstance(exc, (HepinfraError, _userdata.UserDataError)) else "%s: %s" % (type(exc).__name__, exc)
        with run.lock:
            run.errors.append("%s: %s" % (name, text))
        if token:
            # The token was minted and stays valid until it expires: the site must know of it.
            settings.audit.record("launch_failed", worker, token_expires=W.iso_time(now + settings.token_lifetime),
                                  reason=text)
        run.event(worker, "failed", text)
        return
    worker.instance_id, worker.cloud_state, worker.cloud_status = created.instance_id, created.cloud_state, created.cloud_status
    with run.lock:
        run.launched.append(worker)
    settings.audit.record("launch", worker, token_expires=W.iso_time(now + settings.token_lifetime) if token else None,
                          reason="count %d" % placement.count)
    run.event(worker, "launched", "count %d" % placement.count)
    if settings.netbox is not None:
        try:
            settings.netbox.register(worker, resolved)
        except HepinfraError as exc:
            with run.lock:
                run.errors.append("%s: NetBox: %s" % (name, exc))


def delete_one(run: CloudRun, step: W.Step, settings: LaunchSettings) -> bool:
    try:
        run.provider.delete(step.worker)
    except HepinfraError as exc:
        with run.lock:
            run.errors.append("%s: %s" % (step.worker.name, exc))
        run.event(step.worker, "failed", "delete: %s" % exc)
        return False
    settings.audit.record("delete", step.worker, reason=step.reason)
    run.event(step.worker, "deleted", step.reason)
    if settings.netbox is not None:
        try:
            settings.netbox.unregister(step.worker)
        except HepinfraError as exc:
            with run.lock:
                run.errors.append("%s: NetBox: %s" % (step.worker.name, exc))
    return True


def drain_one(run: CloudRun, step: W.Step, settings: LaunchSettings) -> bool:
    now = time.time()
    try:
        if settings.collector:
            settings.condor.drain(step.worker)
        run.provider.mark(step.worker, W.META_DRAINING, "%d" % now)
    except HepinfraError as exc:
        with run.lock:
            run.errors.append("%s: %s" % (step.worker.name, exc))
        run.event(step.worker, "failed", "drain: %s" % exc)
        return False
    step.worker.draining_since = now
    settings.audit.record("drain", step.worker, reason=step.reason)
    run.event(step.worker, "draining", step.reason)
    return True


def apply(run: CloudRun, settings: LaunchSettings, drain_wait: float) -> None:
    """Delete, drain, then launch on one cloud. Runs in the cloud's own thread; never raises."""
    try:
        _apply(run, settings, drain_wait)
    except HepinfraError as exc:
        run.error = str(exc)
    except Exception as exc:  # pylint: disable=broad-exception-caught
        run.error = "cloud %s: %s: %s" % (run.name, type(exc).__name__, exc)


def _apply(run: CloudRun, settings: LaunchSettings, drain_wait: float) -> None:
    plan = run.plan
    if plan is None or run.provider is None:
        return
    # Remember who has been in the pool: a registered worker whose slots go missing later
    # (collector restart, expired token) may still run jobs and is never taken for unregistered.
    for worker in run.workers:
        if worker.slots and not worker.registered_at and worker.cloud_state != W.FAILED:
            try:
                run.provider.mark(worker, W.META_REGISTERED, "%d" % time.time())
            except HepinfraError as exc:
                run.errors.append("%s: %s" % (worker.name, exc))
    deletes = plan.of("delete")
    parallel(deletes, lambda step: delete_one(run, step, settings), settings.parallel)
    for name in run.leftovers:
        try:
            run.provider.remove_leftover(name)
        except HepinfraError as exc:
            run.errors.append("%s: %s" % (name, exc))
        else:
            run.removed.append(name)
    drains = plan.of("drain")
    drained = [step for step in drains if drain_one(run, step, settings)]
    if plan.launch:
        try:
            placement = run.placement
            resolved = run.provider.prepare(placement.flavor or "", placement.image or "", placement.network)
        except HepinfraError as exc:
            run.errors.append(str(exc))
        else:
            parallel(list(range(plan.launch)), lambda _i: launch_one(run, settings, resolved), settings.parallel)
    # Idle workers are drained within seconds: wait a little and delete them in this run;
    # busy ones are deleted by a later run once their jobs are done.
    idle = [step for step in drained if not step.worker.claimed]
    if idle and drain_wait > 0 and settings.collector:
        pending = {step.worker.uuid: step for step in idle}

        def gone() -> bool:
            try:
                slots = settings.condor.slots()
            except HepinfraError:
                return False
            probe = [W.Worker(**{**step.worker.__dict__, "slots": []}) for step in pending.values()]
            W.attach_slots(probe, slots)
            for worker in probe:
                if not worker.slots or worker.drained:
                    step = pending.pop(worker.uuid)
                    delete_one(run, W.Step(step.worker, "delete", "drained: no job left on it"), settings)
            return not pending
        C.wait(gone, drain_wait, 2.0)


def wait_for(runs: list[CloudRun], condor: W.Condor | None, group: str, until: str, timeout: float) -> None:
    """Wait until every launched worker is active (or registered in the pool); record who is late."""
    deadline = time.monotonic() + timeout

    def one(run: CloudRun) -> None:
        if not run.launched or run.provider is None:
            return
        want = {w.uuid: w for w in run.launched}
        while want:
            try:
                listed = {w.uuid: w for w in run.provider.workers(group)}
            except HepinfraError as exc:
                run.errors.append("waiting: %s" % exc)
                return
            for worker_uuid in list(want):
                seen = listed.get(worker_uuid)
                if seen is None:
                    continue
                want[worker_uuid].cloud_state, want[worker_uuid].cloud_status = seen.cloud_state, seen.cloud_status
                want[worker_uuid].addresses = seen.addresses
                if seen.cloud_state == W.FAILED:
                    run.errors.append("%s: the instance went into error (%s)" % (seen.name, seen.fault or seen.cloud_status))
                    del want[worker_uuid]
                elif seen.cloud_state == W.ACTIVE and until == "active":
                    del want[worker_uuid]
            if until == "registered" and want and condor is not None:
                try:
                    slots = condor.slots()
                except HepinfraError:
                    slots = []
                probe = list(want.values())
                W.attach_slots(probe, slots)
                for worker in probe:
                    if worker.slots:
                        del want[worker.uuid]
            if not want:
                return
            if time.monotonic() >= deadline:
                run.errors.append("%d worker%s not %s after %d s: %s" % (
                    len(want), "" if len(want) == 1 else "s", until, timeout, ", ".join(sorted(w.name for w in want.values()))))
                return
            time.sleep(2.0)
    parallel(runs, one, len(runs))


def cloud_report(run: CloudRun, applied: bool) -> dict[str, Any]:
    """One cloud's entry in the result: what was (or, in check mode, would be) done."""
    plan = run.plan
    provider = run.provider
    if applied:
        launched = [e["name"] for e in run.events if e["action"] == "launched"]
        drained = [e["name"] for e in run.events if e["action"] == "draining"]
        deleted = [e["name"] for e in run.events if e["action"] == "deleted"]
        to_launch = len(launched)
    else:
        launched = []
        drained = [s.worker.name for s in plan.of("drain")] if plan else []
        deleted = [s.worker.name for s in plan.of("delete")] if plan else []
        to_launch = plan.launch if plan else 0
    leftovers = run.removed if applied else run.leftovers
    if applied:
        changed = bool(launched or drained or deleted or leftovers)
    else:
        changed = run.error is None and bool(to_launch or drained or deleted or leftovers)
    states: dict[str, int] = {}
    for worker in run.workers:
        states[worker.pool_state] = states.get(worker.pool_state, 0) + 1
    failed = run.error is not None or bool(run.errors)
    return {
        "cloud": run.name, "type": run.placement.cloud.type, "count": run.placement.count,
        "changed": changed,
        "failed": failed, "error": run.error or ("; ".join(run.errors) if run.errors else None),
        "errors": list(run.errors), "before": {"total": len(run.workers), **states},
        "launch": to_launch, "launched": sorted(launched), "drained": sorted(drained), "deleted": sorted(deleted),
        "leftovers": list(leftovers), "foreign": sorted(provider.foreign) if provider else [],
        "warnings": list(provider.warnings) if provider else [],
    }


def worker_reports(run: CloudRun, applied: bool) -> list[dict[str, Any]]:
    """Per worker: the events of a real run, or the plan's steps in check mode; kept workers too."""
    now = time.time()
    reports: dict[str, dict[str, Any]] = {}
    if run.plan is not None:
        for step in run.plan.steps:
            entry = step.worker.report(now)
            entry.update(action=step.action, reason=step.reason)
            reports[step.worker.name] = entry
    if applied:
        for event in run.events:
            entry = reports.setdefault(event["name"], {"name": event["name"], "uuid": event["uuid"], "cloud": run.name})
            entry.update(action=event["action"], reason=event["reason"])
        for worker in run.launched:
            reports.setdefault(worker.name, {}).update(worker.report(now), action="launched")
    return sorted(reports.values(), key=lambda entry: entry["name"])


class NetBoxRegistry:
    """Workers as NetBox virtual machines of one cluster (pynetbox)."""

    def __init__(self, settings: dict[str, Any], pynetbox: Any) -> None:
        if pynetbox is None:
            raise HepinfraError("pynetbox is not installed where the module runs", hint="pip install pynetbox")
        self.api = pynetbox.api(settings["url"], token=settings["token"])
        self.api.http_session.verify = settings["validate_certs"]
        self.error = pynetbox.RequestError
        self.lock = threading.Lock()
        try:
            cluster = self.api.virtualization.clusters.get(name=settings["cluster"])
            role = self.api.dcim.device_roles.get(slug=settings["role"]) if settings.get("role") else None
        except self.error as exc:
            raise HepinfraError("NetBox: %s" % exc.error) from None
        if cluster is None:
            raise HepinfraError("NetBox has no cluster %s" % settings["cluster"])
        if settings.get("role") and role is None:
            raise HepinfraError("NetBox has no device role %s" % settings["role"])
        self.cluster_id = cluster.id
        self.role_id = role.id if role is not None else None

    def register(self, worker: W.Worker, resolved: dict[str, Any]) -> None:
        fields: dict[str, Any] = {"name": worker.name, "cluster": self.cluster_id, "status": "active",
                                  "comments": "hepinfra.cloud worker %s (group %s, config %s, cloud %s)"
                                              % (worker.uuid, worker.group, worker.config, worker.cloud)}
        flavor = resolved.get("flavor")
        if isinstance(flavor, dict):                     # libvirt flavors
            fields.update(vcpus=flavor["vcpus"], memory=flavor["memory_mb"])
        elif flavor is not None and getattr(flavor, "vcpus", None):
            fields.update(vcpus=flavor.vcpus, memory=flavor.ram)
        if self.role_id is not None:
            fields["role"] = self.role_id
        try:
            with self.lock:
                self.api.virtualization.virtual_machines.create(fields)
        except self.error as exc:
            raise HepinfraError("registering %s: %s" % (worker.name, exc.error)) from None

    def unregister(self, worker: W.Worker) -> None:
        try:
            with self.lock:
                for machine in self.api.virtualization.virtual_machines.filter(name=worker.name, cluster_id=self.cluster_id):
                    machine.delete()
        except self.error as exc:
            raise HepinfraError("removing %s: %s" % (worker.name, exc.error)) from None
