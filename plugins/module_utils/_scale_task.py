# -*- coding: utf-8 -*-
# Copyright: hepinfra.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""One scaling cycle: read the queues, the clouds and the pool; decide (``_demand``); act; report.

Used by the demand_info module (read and decide) and the scale module (the whole cycle, under a
lock, with a history line). Private to this collection: the API may change between releases.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from ansible_collections.hepinfra.cloud.plugins.module_utils import _clouds, _demand as D
from ansible_collections.hepinfra.cloud.plugins.module_utils import _worker_task as T, _workers as W
from ansible_collections.hepinfra.cloud.plugins.module_utils._base import SHARED_SPECS, HepinfraError

# The options demand_info and scale share (documented in the doc fragment hepinfra.cloud.scale).
SCALE_SPEC: dict[str, dict[str, Any]] = {
    "groups": {"type": "list", "elements": "dict", "required": True, "options": {
        "name": {"type": "str", "required": True},
        "config": {"type": "str", "default": "default"},
        "accounting_groups": {"type": "list", "elements": "str", "default": []},
        "clouds": {"type": "list", "elements": "str", "default": []},
        "image": {"type": "str"},
    }},
    "flavors": {"type": "dict", "default": {}},
    "schedds": {"type": "list", "elements": "str", "default": []},
    "policy": {"type": "dict", "default": {}, "options": {
        "keep_alive": {"type": "int", "default": 600},
        "come_alive": {"type": "int", "default": 1800},
        "job_alive": {"type": "int", "default": 1800},
        "max_starting": {"type": "int"},
        "max_launches": {"type": "int"},
        "idle_enough": {"type": "int"},
        "memory_reserve_mb": {"type": "int"},
    }},
    "condor": {"type": "dict", "default": {}, "options": T.CONDOR_OPTIONS},
}
SHARED_SPECS["scale"] = SCALE_SPEC

LIBRARIES = ("openstack", "libvirt", "pycdlib")


@dataclass
class Group:
    name: str
    config: str
    accounting_groups: list[str]
    clouds: list[str]
    image: str | None


@dataclass
class Cycle:
    """Everything one cycle read, decided and did."""

    started: float
    groups: dict[str, Group]
    clouds: list[_clouds.Cloud]
    runs: dict[str, T.CloudRun] = field(default_factory=dict)            # cloud -> listing (all owned workers)
    queue: D.Queue = field(default_factory=D.Queue)
    schedds: dict[str, dict[str, Any]] = field(default_factory=dict)
    decision_clouds: list[D.Cloud] = field(default_factory=list)
    cloud_info: dict[str, dict[str, Any]] = field(default_factory=dict)
    workers: list[D.Worker] = field(default_factory=list)                # as the decision sees them
    owned: dict[str, W.Worker] = field(default_factory=dict)             # name -> worker (managed groups only)
    plan: D.Plan | None = None
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    applied: list[T.CloudRun] = field(default_factory=list)


def check(params: dict[str, Any]) -> dict[str, Group]:
    """Validate the shared options; return the groups by name."""
    groups: dict[str, Group] = {}
    mapped: dict[str, str] = {}
    for entry in params["groups"]:
        W.check_group(entry["name"])
        W.check_config(entry["config"])
        if entry["name"] in groups:
            raise HepinfraError("groups name %s twice" % entry["name"])
        for prefix in entry["accounting_groups"]:
            if prefix in mapped and mapped[prefix] != entry["name"]:
                raise HepinfraError("accounting group %s is mapped to both %s and %s" % (prefix, mapped[prefix], entry["name"]))
            mapped[prefix] = entry["name"]
        groups[entry["name"]] = Group(entry["name"], entry["config"], list(entry["accounting_groups"]),
                                      list(entry["clouds"]), entry["image"])
    if not groups:
        raise HepinfraError("groups is empty", hint="Name at least one worker group the cycle scales")
    policy = params["policy"]
    for key in ("keep_alive", "come_alive", "job_alive"):
        if policy[key] < 0:
            raise HepinfraError("policy.%s must be 0 or more" % key)
    for key in ("max_starting", "max_launches", "idle_enough", "memory_reserve_mb"):
        if policy[key] is not None and policy[key] < 0:
            raise HepinfraError("policy.%s must be 0 or more" % key)
    for cloud, names in params["flavors"].items():
        if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
            raise HepinfraError("flavors.%s must be a list of flavor names" % cloud)
    return groups


def usable_mb(ram_mb: int, reserve: int | None) -> int:
    """The memory HTCondor offers jobs on a worker of ``ram_mb``: the flavor's RAM less the reserve
    (by default 5 % of it, at least 64 MiB: what the guest's kernel keeps)."""
    if reserve is None:
        reserve = max(64, ram_mb * 5 // 100)
    return max(ram_mb - reserve, 0)


def check_clouds(groups: dict[str, Group], clouds: list[_clouds.Cloud]) -> None:
    """Every enabled cloud a group may launch on must be able to host its workers: a valid worker
    name, an image, and on OpenStack a network. Checked before anything is done."""
    problems = []
    names = {cloud.name for cloud in clouds}
    for group in groups.values():
        unknown = [name for name in group.clouds if name not in names]
        if unknown:
            problems.append("group %s names unknown clouds: %s" % (group.name, ", ".join(unknown)))
        for cloud in clouds:
            if not cloud.enabled or (group.clouds and cloud.name not in group.clouds):
                continue
            try:
                W.check_cloud_name(group.name, cloud.name)
            except HepinfraError as exc:
                problems.append(str(exc).rstrip("."))
            if not (group.image or cloud.defaults.get("image")):
                problems.append("group %s has no image on cloud %s (set groups[].image or the cloud's defaults.image)"
                                % (group.name, cloud.name))
            if cloud.type == "openstack" and not cloud.defaults.get("network"):
                problems.append("cloud %s has no defaults.network: group %s's workers could not reach the pool"
                                % (cloud.name, group.name))
    if problems:
        raise HepinfraError("; ".join(problems), hint="Fix the groups or the cloud definitions")


def policy_of(params: dict[str, Any]) -> D.Policy:
    policy = params["policy"]
    return D.Policy(keep_alive=policy["keep_alive"], come_alive=policy["come_alive"], job_alive=policy["job_alive"],
                    max_launches=policy["max_launches"], idle_enough=policy["idle_enough"])


def condor_of(params: dict[str, Any]) -> W.Condor:
    return T.condor_of(params["condor"])


def accounting_map(groups: dict[str, Group]) -> dict[str, str]:
    return {prefix: group.name for group in groups.values() for prefix in group.accounting_groups}


# -- reading -------------------------------------------------------------------------------------

def read_queues(cycle: Cycle, condor: W.Condor, schedds: list[str]) -> None:
    """Idle and running jobs of every schedd (the local one when none is named); a schedd that does
    not answer is reported and its jobs are missing from the demand (launching too few is safe)."""
    mapping = accounting_map(cycle.groups)
    for schedd in schedds or [None]:
        label = schedd or "local"
        try:
            queue = D.read_queue(condor.run(D.queue_argv(schedd)), mapping)
        except HepinfraError as exc:
            cycle.schedds[label] = {"ok": False, "error": str(exc), "idle": 0, "running": 0}
            cycle.errors.append("schedd %s: %s" % (label, exc))
            continue
        cycle.schedds[label] = {"ok": True, "error": None, "idle": sum(queue.idle.values()) + queue.unmatched,
                                "running": sum(queue.running.values())}
        cycle.queue.add(queue)
    # Jobs of unscaled groups are not demand; a group's own cloud list narrows the job's.
    idle: dict[D.Shape, int] = {}
    for shape, count in cycle.queue.idle.items():
        group = cycle.groups.get(shape.group)
        if group is None:
            cycle.queue.unmatched += count
            continue
        if group.clouds:
            allowed = tuple(c for c in (shape.clouds or sorted(group.clouds)) if c in group.clouds)
            shape = D.Shape(shape.group, shape.cpus, shape.memory_mb, shape.disk_mb, allowed or ("-",))
        idle[shape] = idle.get(shape, 0) + count
    cycle.queue.idle = idle


def read_clouds(cycle: Cycle, libraries: dict[str, Any], flavor_names: dict[str, list[str]]) -> None:
    """List every owned worker on every cloud (disabled ones too: their workers are retired) at once, with
    each cloud's flavors and usage."""
    runs = [T.CloudRun(T.Placement(cloud=cloud, count=0)) for cloud in cycle.clouds]
    T.connect_and_list(runs, libraries, None, None)

    def capacity(run: T.CloudRun) -> None:
        if run.error is not None:
            return
        cloud = run.placement.cloud
        info: dict[str, Any] = {"ok": True, "error": None}
        try:
            every = run.provider.flavors()
            info["sizes"] = {f.name: f for f in every}             # disabled ones too: workers may use them
            flavors = [f for f in every if f.enabled]
            wanted = flavor_names.get(cloud.name)
            if wanted is None and cloud.type == "openstack" and cloud.defaults.get("flavor"):
                wanted = [cloud.defaults["flavor"]]
            if wanted is not None:
                flavors = [f for f in flavors if f.name in wanted]
            info["flavors"] = flavors
            info["usage"] = run.provider.usage() if cloud.limits.get("count_project_usage") else None
        except HepinfraError as exc:
            run.error = str(exc)
        except Exception as exc:  # pylint: disable=broad-exception-caught
            run.error = "cloud %s: %s: %s" % (run.name, type(exc).__name__, exc)
        cycle.cloud_info[cloud.name] = info
    T.parallel(runs, capacity, len(runs))
    for run in runs:
        cycle.runs[run.name] = run
        # e.g. an OpenStack application credential close to its expiry (credential_warning_days)
        for warning in getattr(run.provider, "warnings", None) or []:
            if warning not in cycle.warnings:
                cycle.warnings.append(warning)
        if run.error is not None:
            cycle.cloud_info[run.name] = {"ok": False, "error": run.error}
            text = run.error if run.name in run.error else "cloud %s: %s" % (run.name, run.error)
            # A disabled cloud is only asked so that its workers can be retired: not answering is no failure.
            (cycle.errors if run.placement.cloud.enabled else cycle.warnings).append(text)


def _free(worker: W.Worker) -> tuple[int, int]:
    """Unclaimed CPUs and MiB on a registered worker: unclaimed static slots and what partitionable
    slots have left."""
    cpus = memory = 0
    for ad in worker.slots:
        if ad.get("DynamicSlot") or str(ad.get("State", "")) not in ("Unclaimed",):
            continue
        try:
            cpus += int(float(ad.get("Cpus") or 0))
            memory += int(float(ad.get("Memory") or 0))
        except (TypeError, ValueError):
            continue
    return cpus, memory


def decision_state(worker: W.Worker) -> str:
    if worker.cloud_state in (W.FAILED, W.STOPPED):
        return D.ERROR
    if worker.draining or worker.pool_state == W.DRAINING:
        return D.DRAINING
    if worker.pool_state == W.BUSY:
        return D.BUSY
    if worker.pool_state == W.IDLE:
        return D.IDLE
    if worker.registered:
        # Seen in the pool before, its slots missing now: it may run jobs; never retired on that account.
        return D.BUSY
    return D.STARTING


def build(cycle: Cycle, policy: dict[str, Any], now: float) -> None:
    """The decision's view of clouds and workers. A cloud that did not answer is left out: nothing
    is launched there and nothing is retired (its workers' pool state is not known)."""
    reserve = policy.get("memory_reserve_mb")
    for cloud in cycle.clouds:
        run = cycle.runs.get(cloud.name)
        if run is None or run.error is not None:
            continue
        info = cycle.cloud_info.get(cloud.name, {})
        flavors = info.get("flavors") or []
        sizes = info.get("sizes") or {}
        used = D.Usage()
        for worker in (run.workers if run is not None else []):
            if worker.cloud_state == W.GONE:
                continue
            state = decision_state(worker)
            size = sizes.get(worker.flavor)
            if size is not None:
                used.add(D.Flavor(size.name, size.vcpus, size.ram_mb, size.disk_gb))
            else:
                used.instances += 1
            group = cycle.groups.get(worker.group)
            if group is None or worker.config != group.config:
                continue
            cycle.owned[worker.name] = worker
            if state == D.STARTING:
                free = (size.vcpus, usable_mb(size.ram_mb, reserve)) if size is not None else (0, 0)
            elif state in (D.IDLE, D.BUSY):
                free = _free(worker)
            else:
                free = (0, 0)
            last_busy = now if worker.pool_state == W.BUSY else (worker.busy_at or None)
            cycle.workers.append(D.Worker(
                name=worker.name, cloud=worker.cloud, group=worker.group, flavor=worker.flavor, state=state,
                created=worker.created or now, registered=worker.registered_at or (now if worker.slots else None),
                last_busy=last_busy, expires=worker.expires or None, free_cpus=free[0], free_memory_mb=free[1]))
        limits = cloud.limits
        quota: dict[str, Any] = {}
        project = info.get("usage")
        if project is not None:
            # A soft limit over the whole project: what the project runs counts, and Nova's quota caps too.
            used = D.Usage(project.cores, project.ram_mb, project.instances)
            quota = project.quota
        caps = {}
        for key in ("cores", "ram_mb", "instances"):
            values = [v for v in (limits.get(key), quota.get(key)) if v is not None]
            caps[key] = min(values) if values else None
        cycle.decision_clouds.append(D.Cloud(
            name=cloud.name, priority=cloud.priority,
            flavors=[D.Flavor(f.name, f.vcpus, f.ram_mb, f.disk_gb, usable_mb(f.ram_mb, reserve)) for f in flavors],
            cores=caps["cores"], ram_mb=caps["ram_mb"], instances=caps["instances"], used=used,
            max_starting=policy["max_starting"], enabled=cloud.enabled))
        info.update(used={"cores": used.cores, "ram_mb": used.ram_mb, "instances": used.instances},
                    limits=caps, flavors=[f.name for f in flavors], enabled=cloud.enabled)


def read(params: dict[str, Any], libraries: dict[str, Any], now: float) -> Cycle:
    """Read queues, clouds and pool, and decide."""
    groups = check(params)
    # Disabled clouds too: they get no launch, but their workers are still retired.
    clouds = sorted(_clouds.normalize(params["clouds"]).values(), key=lambda cloud: (-cloud.priority, cloud.name))
    if not [cloud for cloud in clouds if cloud.enabled]:
        raise HepinfraError("no enabled cloud", hint="Check the clouds' enabled flags")
    check_clouds(groups, clouds)
    cycle = Cycle(started=now, groups=groups, clouds=clouds)
    condor = condor_of(params)
    try:
        read_clouds(cycle, libraries, params["flavors"])
        pool_error = T.attach_pool([r for r in cycle.runs.values() if r.error is None], condor)
        if pool_error:
            # Without the pool's view nothing can be covered or retired safely.
            raise HepinfraError(pool_error, hint="Fix access to the collector (condor.command_prefix)")
        read_queues(cycle, condor, params["schedds"])
        build(cycle, params["policy"], now)
    except BaseException:
        T.close_all(list(cycle.runs.values()))
        raise
    cycle.plan = D.plan(cycle.queue.idle, cycle.decision_clouds, cycle.workers, policy_of(params), now)
    return cycle


# -- acting --------------------------------------------------------------------------------------

def busy_mark_interval(policy: dict[str, Any]) -> float:
    """How stale a worker's last-busy mark may get while it stays busy: a quarter of keep-alive,
    between 30 s and 5 min (fewer metadata writes on large clouds, keep-alive still honoured)."""
    return min(max(policy["keep_alive"] / 4.0, 30.0), 300.0)


def retire_steps(workers: list[W.Worker], retire: dict[str, D.Retire], policy: dict[str, Any], now: float) -> W.Plan:
    """What happens to one group's workers on one cloud: what must go whatever the count (the
    worker module's rules: error, drained, never registered, stopped, expired), then the decision's
    retirements (drained when in the pool, deleted when not). Launches are the decision's alone,
    and a worker already draining is never drained again."""
    # The count is all of them, so plan_scale retires nothing as surplus.
    steps = W.plan_scale(workers, len(workers), now, policy["come_alive"])
    steps.launch = 0
    for index, step in enumerate(steps.steps):
        item = retire.get(step.worker.name)
        if item is not None and step.action == "keep" and not step.worker.draining:
            steps.steps[index] = W._retire(step.worker, retire_reason(item.reason, policy))  # pylint: disable=protected-access
    return steps


def apply(cycle: Cycle, settings: dict[str, T.LaunchSettings], params: dict[str, Any], now: float) -> None:
    """Retire, launch and mark busy workers: every cloud at once, and on each cloud every group's
    retirements and launches at once (each run waits for its own drains only)."""
    plan = cycle.plan
    retire = {item.name: item for item in plan.retire}
    interval = busy_mark_interval(params["policy"])
    per_cloud: dict[str, list[T.CloudRun]] = {}
    marks: dict[str, list[W.Worker]] = {}
    for name, listing in cycle.runs.items():
        if listing.error is not None:
            continue
        cloud = listing.placement.cloud
        runs = []
        for group in cycle.groups.values():
            workers = [w for w in listing.workers if w.name in cycle.owned and w.group == group.name]
            if not workers:
                continue
            run = T.CloudRun(T.Placement(cloud=cloud, count=len(workers)), provider=listing.provider, workers=workers,
                             plan=retire_steps(workers, retire, params["policy"], now))
            run.group = group.name  # type: ignore[attr-defined]
            runs.append(run)
        for launch in plan.launches:
            if launch.cloud != name:
                continue
            group = cycle.groups[launch.group]
            defaults = cloud.defaults
            placement = T.Placement(
                cloud=cloud, count=launch.count, flavor=launch.flavor, image=group.image or defaults.get("image"),
                network=defaults.get("network") or cloud.libvirt.get("network"), key_name=defaults.get("key_name"),
                security_groups=defaults.get("security_groups") or [])
            run = T.CloudRun(placement, provider=listing.provider, plan=W.Plan(launch=launch.count))
            run.group = group.name  # type: ignore[attr-defined]
            runs.append(run)
        # Disks of the scaled groups' workers whose domain is gone.
        leftovers = [n for n in listing.leftovers if (W.parse_name(n) or ("",))[0] in cycle.groups]
        if leftovers:
            cleanup = T.CloudRun(T.Placement(cloud=cloud, count=0), provider=listing.provider, plan=W.Plan())
            cleanup.group = next(iter(cycle.groups))  # type: ignore[attr-defined]
            cleanup.leftovers = leftovers
            runs.append(cleanup)
        per_cloud[name] = runs
        marks[name] = [w for w in listing.workers
                       if w.name in cycle.owned and w.pool_state == W.BUSY and now - w.busy_at >= interval]

    def mark(item: tuple[str, W.Worker]) -> None:
        name, worker = item
        try:
            cycle.runs[name].provider.mark(worker, W.META_BUSY, "%d" % now)
        except HepinfraError as exc:
            with cycle.runs[name].lock:
                cycle.runs[name].errors.append("%s: %s" % (worker.name, exc))

    def one_job(job: tuple[str, Any]) -> None:
        kind, item = job
        if kind == "mark":
            mark(item)
        else:
            T.apply(item, settings[item.group], params["drain_wait"])

    def one_cloud(name: str) -> None:
        # Every run of the cloud at once (each launches with up to `parallel` threads of its own);
        # the busy marks on up to `parallel` more.
        jobs = [("apply", run) for run in per_cloud[name]] + [("mark", (name, w)) for w in marks[name]]
        T.parallel(jobs, one_job, len(per_cloud[name]) + params["parallel"])
    T.parallel(list(per_cloud), one_cloud, len(per_cloud))
    for name, runs in per_cloud.items():
        cycle.applied.extend(runs)
        listing = cycle.runs[name]
        problems = list(listing.errors) + [e for run in runs for e in ([run.error] if run.error else []) + run.errors]
        for problem in problems:
            cycle.errors.append(problem if name in problem else "cloud %s: %s" % (name, problem))


def retire_reason(reason: str, policy: dict[str, Any]) -> str:
    return {
        "idle": "idle longer than keep_alive (%d s)" % policy["keep_alive"],
        "never ran a job": "no job within job_alive (%d s) of registering" % policy["job_alive"],
        "never registered": "not registered within come_alive (%d s)" % policy["come_alive"],
    }.get(reason, reason)


# -- reporting -----------------------------------------------------------------------------------

def _shape(shape: D.Shape, count: int) -> dict[str, Any]:
    return {"group": shape.group, "cpus": shape.cpus, "memory_mb": shape.memory_mb, "disk_mb": shape.disk_mb,
            "clouds": list(shape.clouds), "jobs": count}


def _per_group(items: dict[D.Shape, int]) -> dict[str, int]:
    out: dict[str, int] = {}
    for shape, count in items.items():
        out[shape.group] = out.get(shape.group, 0) + count
    return out


def report(cycle: Cycle, applied: bool, now: float) -> dict[str, Any]:
    """The result both modules return (and the scale history's source)."""
    plan = cycle.plan
    states: dict[str, dict[str, int]] = {cloud.name: {} for cloud in cycle.clouds}
    for worker in cycle.workers:
        per = states.setdefault(worker.cloud, {})
        per[worker.state] = per.get(worker.state, 0) + 1
    idle = cycle.queue.idle_per_group()
    jobs = {name: {"idle": idle.get(name, 0), "running": cycle.queue.running.get(name, 0)} for name in cycle.groups}
    launched: list[str] = []
    drained: list[str] = []
    deleted: list[str] = []
    per_cloud_launched: dict[str, dict[str, int]] = {}
    if applied:
        for run in cycle.applied:
            for event in run.events:
                if event["action"] == "launched":
                    launched.append(event["name"])
                    per = per_cloud_launched.setdefault(run.name, {})
                    per[run.group] = per.get(run.group, 0) + 1  # type: ignore[attr-defined]
                elif event["action"] == "draining":
                    drained.append(event["name"])
                elif event["action"] == "deleted":
                    deleted.append(event["name"])
    return {
        "jobs": jobs,
        "unmatched_jobs": cycle.queue.unmatched,
        "schedds": cycle.schedds,
        "workers": states,
        "clouds": {name: {k: v for k, v in info.items() if k not in ("usage", "sizes")}
                   for name, info in cycle.cloud_info.items()},
        "plan": {
            "launch": [{"cloud": item.cloud, "group": item.group, "flavor": item.flavor, "count": item.count,
                        "for": _shape(item.shape, 0)} for item in plan.launches],
            "retire": [{"name": item.name, "cloud": item.cloud, "group": item.group, "reason": item.reason}
                       for item in plan.retire],
            "covered": [_shape(s, n) for s, n in sorted(plan.covered.items())],
            "shortfall": [_shape(s, n) for s, n in sorted(plan.shortfall.items())],
            "unfit": [_shape(s, n) for s, n in sorted(plan.unfit.items())],
            "held_back": dict(plan.held_back),
        },
        "shortfall": _per_group(plan.shortfall),
        "unfit": _per_group(plan.unfit),
        "launched": sorted(launched),
        "drained": sorted(drained),
        "deleted": sorted(deleted),
        "launched_per_cloud": per_cloud_launched,
        "errors": list(cycle.errors),
        "duration": round(now - cycle.started, 3),
    }


def history_line(result: dict[str, Any], now: float) -> dict[str, Any]:
    """One cycle in the history file: what the status report plots."""
    return {
        "time": datetime.datetime.fromtimestamp(now, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "epoch": round(now, 3), "duration": result["duration"], "jobs": result["jobs"],
        "unmatched_jobs": result["unmatched_jobs"], "workers": result["workers"],
        "launched": result["launched_per_cloud"], "drained": len(result["drained"]), "deleted": len(result["deleted"]),
        "shortfall": result["shortfall"], "unfit": result["unfit"], "errors": len(result["errors"]),
        "lock_waited": result.get("lock_waited", 0.0),
    }


def append_history(path: str, line: dict[str, Any]) -> None:
    """Append one JSON line; one write of a line shorter than the pipe buffer, so concurrent writers
    never interleave on a local file system."""
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    data = (json.dumps(line, sort_keys=True) + "\n").encode("utf-8")
    handle = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(handle, data)
    finally:
        os.close(handle)


# -- the lock ------------------------------------------------------------------------------------

class CycleLock:
    """An exclusive flock on a file on the host the module runs on, held for the whole cycle. The
    kernel releases it when the process ends, however it ends: there is never a stale lock."""

    def __init__(self, path: str, timeout: float) -> None:
        self.path = path
        self.timeout = timeout
        self.handle: int | None = None
        self.waited = 0.0

    def __enter__(self) -> CycleLock:
        folder = os.path.dirname(self.path)
        try:
            if folder:
                os.makedirs(folder, exist_ok=True)
            self.handle = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise HepinfraError("cannot open the lock file %s: %s" % (self.path, exc.strerror or exc),
                                hint="Set lock_file to a writable path on the host the cycle runs on") from None
        started = time.monotonic()
        while True:
            try:
                fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
            if time.monotonic() - started >= self.timeout:
                holder = os.pread(self.handle, 4096, 0).decode("utf-8", "replace").strip()
                os.close(self.handle)
                self.handle = None
                raise HepinfraError("another scaling cycle holds the lock %s (%s) for more than lock_timeout (%d s)"
                                    % (self.path, holder or "no holder recorded", self.timeout),
                                    hint="It may still be launching; see its log. The lock goes with its process.")
            time.sleep(0.5)
        self.waited = time.monotonic() - started
        holder = "pid %d on %s since %s" % (os.getpid(), socket.gethostname(),
                                            time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        os.ftruncate(self.handle, 0)
        os.pwrite(self.handle, holder.encode("utf-8"), 0)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.handle is not None:
            os.ftruncate(self.handle, 0)
            fcntl.flock(self.handle, fcntl.LOCK_UN)
            os.close(self.handle)
            self.handle = None
