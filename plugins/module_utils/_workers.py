# -*- coding: utf-8 -*-
# Copyright: hepinfra.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ephemeral workers: names, ownership, pool state, the scale plan, tokens and the audit log.

Everything here works on plain data; the cloud side is in ``_worker_clouds``. Used by the
worker and worker_info modules.

Private to this collection: the leading underscore means the API may change between releases.
"""

from __future__ import annotations

import base64
import dataclasses
import fcntl
import json
import os
import re
import stat
import subprocess
import time
import uuid as uuid_module
from dataclasses import dataclass, field
from typing import Any, Iterable

from ansible_collections.hepinfra.cloud.plugins.module_utils._base import HepinfraError

OWNER = "hepinfra.cloud"
#: Metadata keys every owned instance carries (OpenStack server metadata; libvirt domain metadata).
META_OWNER = "hepinfra_owner"
META_GROUP = "hepinfra_group"
META_CONFIG = "hepinfra_config"
META_CLOUD = "hepinfra_cloud"
META_UUID = "hepinfra_uuid"
META_FLAVOR = "hepinfra_flavor"
META_IMAGE = "hepinfra_image"
META_CREATED = "hepinfra_created"
META_EXPIRES = "hepinfra_expires"
META_TOKEN = "hepinfra_token_identity"
META_DRAINING = "hepinfra_draining"
META_REGISTERED = "hepinfra_registered"
META_BUSY = "hepinfra_busy"              # last seen running a job (hepinfra.cloud.scale)
#: The startd attribute that ties a worker's slots to the instance.
UUID_ATTRIBUTE = "HepinfraWorkerUuid"
STARTD_ATTRIBUTES = {UUID_ATTRIBUTE: "uuid", "HepinfraGroup": "group", "HepinfraCloud": "cloud",
                     "HepinfraConfig": "config", "HepinfraFlavor": "flavor"}

SEPARATOR = "--"
GROUP_PATTERN = re.compile(r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$")
CONFIG_PATTERN = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,62})$")
UUID_PATTERN = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
TOKEN_AUTHZ = ("ADVERTISE_MASTER", "ADVERTISE_STARTD", "READ")

#: Pool states, as worker_info reports them.
UNREGISTERED, IDLE, BUSY, DRAINING, ERROR = "unregistered", "idle", "busy", "draining", "error"
#: Cloud states the providers map their own to.
BUILDING, ACTIVE, STOPPED, FAILED, GONE = "building", "active", "stopped", "error", "gone"


def check_group(group: str) -> None:
    """A group becomes part of host names: lower-case letters, digits and single '-' only."""
    if not GROUP_PATTERN.match(group or "") or SEPARATOR in group:
        raise HepinfraError("group %r must be 1-40 lower-case letters, digits or '-', start and end with a letter or "
                            "digit, and not contain '--'" % group)


CLOUD_PATTERN = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
HOST_NAME_MAX = 63


def check_cloud_name(group: str, cloud: str) -> None:
    """Workers on a cloud carry its name in their host name: it must fit there and parse back."""
    if not CLOUD_PATTERN.match(cloud) or SEPARATOR in cloud:
        raise HepinfraError("cloud %s cannot hold workers: its name becomes part of their host names, so it must be "
                            "lower-case letters, digits and single '-'" % cloud)
    length = len(worker_name(group, cloud, "0" * 36))
    if length > HOST_NAME_MAX:
        raise HepinfraError("worker names of group %s on cloud %s would be %d characters, over the %d a host name "
                            "may have: shorten the group or the cloud name" % (group, cloud, length, HOST_NAME_MAX))


def check_config(config: str) -> None:
    if not CONFIG_PATTERN.match(config or ""):
        raise HepinfraError("config %r must be 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit"
                            % config)


def prefix(group: str, cloud: str) -> str:
    """The name every worker of a group on a cloud starts with."""
    return "%s%s%s%s" % (group, SEPARATOR, cloud.lower(), SEPARATOR)


def worker_name(group: str, cloud: str, worker_uuid: str) -> str:
    """``<group>--<cloud>--<uuid>`` in lower case: also the worker's host name (under 64 characters when the
    group and cloud names leave room: 40 + 2 + cloud + 2 + 36)."""
    return (prefix(group, cloud) + worker_uuid).lower()


def parse_name(name: str) -> tuple[str, str, str] | None:
    """(group, cloud, uuid) of a worker name, or None when the name is not one."""
    parts = name.split(SEPARATOR)
    if len(parts) != 3 or not UUID_PATTERN.match(parts[2]):
        return None
    return parts[0], parts[1], parts[2]


def new_uuid() -> str:
    return str(uuid_module.uuid4())


@dataclass
class Worker:
    """One owned instance as a cloud reports it, plus what the pool says about it."""

    name: str
    uuid: str
    cloud: str
    group: str
    config: str
    instance_id: str
    cloud_state: str                     # building | active | stopped | error | gone
    cloud_status: str = ""               # the cloud's own word (ACTIVE, BUILD, ERROR, running, shut off, ...)
    flavor: str = ""
    image: str = ""
    created: float = 0.0
    expires: float = 0.0
    token_identity: str = ""
    draining_since: float = 0.0
    registered_at: float = 0.0           # first seen in the pool (recorded in the instance)
    busy_at: float = 0.0                 # last seen with a claimed slot (recorded by hepinfra.cloud.scale)
    addresses: list[str] = field(default_factory=list)
    fault: str = ""
    # From the collector
    slots: list[dict[str, Any]] = field(default_factory=list)
    pool_state: str = UNREGISTERED
    claimed: int = 0
    idle_since: float = 0.0

    @property
    def draining(self) -> bool:
        return self.draining_since > 0

    @property
    def registered(self) -> bool:
        """In the pool now, or seen there by an earlier run."""
        return self.registered_at > 0 or bool(self.slots)

    @property
    def drained(self) -> bool:
        """Registered, nothing claimed, every slot drained: nothing left to lose."""
        return bool(self.slots) and not self.claimed and all(
            str(ad.get("State", "")) == "Drained" and str(ad.get("Activity", "")) == "Idle" for ad in self.slots)

    def report(self, now: float) -> dict[str, Any]:
        return {
            "name": self.name, "uuid": self.uuid, "cloud": self.cloud, "group": self.group, "config": self.config,
            "instance_id": self.instance_id, "cloud_state": self.cloud_state, "cloud_status": self.cloud_status,
            "pool_state": self.pool_state, "flavor": self.flavor, "image": self.image,
            "created": iso_time(self.created), "age": int(now - self.created) if self.created else None,
            "expires": iso_time(self.expires), "draining_since": iso_time(self.draining_since),
            "token_identity": self.token_identity, "addresses": list(self.addresses), "slots": len(self.slots),
            "claimed_slots": self.claimed, "fault": self.fault or None,
        }


def iso_time(epoch: float) -> str | None:
    if not epoch:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def ownership(group: str, config: str, cloud: str, worker_uuid: str, flavor: str, image: str, created: float,
              expires: float, token_identity: str) -> dict[str, str]:
    """The metadata that marks an instance as this collection's worker (all strings, as Nova wants)."""
    return {
        META_OWNER: OWNER, META_GROUP: group, META_CONFIG: config, META_CLOUD: cloud, META_UUID: worker_uuid,
        META_FLAVOR: flavor, META_IMAGE: image, META_CREATED: "%d" % created, META_EXPIRES: "%d" % expires,
        META_TOKEN: token_identity,
    }


def owned(name: str, metadata: dict[str, Any], cloud: str) -> bool:
    """Whether an instance is ours: the owner mark, a worker name, and name and metadata agreeing.

    A look-alike name without the mark, or a mark copied onto another name, is not ours.
    """
    if metadata.get(META_OWNER) != OWNER:
        return False
    parsed = parse_name(name)
    if parsed is None:
        return False
    group, name_cloud, worker_uuid = parsed
    return (metadata.get(META_GROUP) == group and metadata.get(META_UUID) == worker_uuid
            and name_cloud == cloud.lower() and str(metadata.get(META_CLOUD, "")).lower() == cloud.lower())


def worker_from(name: str, metadata: dict[str, Any], instance_id: str, cloud_state: str, cloud_status: str,
                addresses: Iterable[str] = (), fault: str = "") -> Worker:
    """A Worker from an owned instance's name and metadata."""
    def number(key: str) -> float:
        try:
            return float(metadata.get(key) or 0)
        except (TypeError, ValueError):
            return 0.0

    return Worker(
        name=name, uuid=str(metadata[META_UUID]), cloud=str(metadata[META_CLOUD]), group=str(metadata[META_GROUP]),
        config=str(metadata.get(META_CONFIG, "")), instance_id=instance_id, cloud_state=cloud_state,
        cloud_status=cloud_status, flavor=str(metadata.get(META_FLAVOR, "")), image=str(metadata.get(META_IMAGE, "")),
        created=number(META_CREATED), expires=number(META_EXPIRES), token_identity=str(metadata.get(META_TOKEN, "")),
        draining_since=number(META_DRAINING), registered_at=number(META_REGISTERED), busy_at=number(META_BUSY),
        addresses=list(addresses),
        fault=fault)


# -- The pool's view ---------------------------------------------------------------------

def attach_slots(workers: Iterable[Worker], slots: Iterable[dict[str, Any]]) -> None:
    """Give each worker its startd slot ads and set its pool state.

    A slot belongs to a worker by the HepinfraWorkerUuid attribute, or else by its Machine (the
    worker's host name, possibly with a domain). A partitionable slot with nothing carved out of
    it is idle; any claimed slot makes the worker busy.
    """
    by_uuid: dict[str, list[dict[str, Any]]] = {}
    by_host: dict[str, list[dict[str, Any]]] = {}
    for ad in slots:
        worker_uuid = str(ad.get(UUID_ATTRIBUTE) or "").lower()
        if worker_uuid:
            by_uuid.setdefault(worker_uuid, []).append(ad)
        else:
            host = str(ad.get("Machine") or "").split(".", 1)[0].lower()
            by_host.setdefault(host, []).append(ad)
    for worker in workers:
        worker.slots = by_uuid.get(worker.uuid.lower(), []) + by_host.get(worker.name.lower(), [])
        worker.claimed = sum(1 for ad in worker.slots if _claimed(ad))
        idle_since = [float(ad.get("EnteredCurrentState") or 0) for ad in worker.slots]
        worker.idle_since = max(idle_since) if idle_since and not worker.claimed else 0.0
        if worker.cloud_state == FAILED:
            worker.pool_state = ERROR
        elif worker.draining or any(str(ad.get("State", "")) == "Drained" for ad in worker.slots):
            worker.pool_state = DRAINING
        elif not worker.slots:
            worker.pool_state = UNREGISTERED
        elif worker.claimed:
            worker.pool_state = BUSY
        else:
            worker.pool_state = IDLE


def _claimed(ad: dict[str, Any]) -> bool:
    if str(ad.get("State", "")) in ("Claimed", "Preempting"):
        return True
    # A partitionable slot stays Unclaimed while its dynamic children run jobs; they are counted
    # as their own ads, but some collectors only return the parent with its child count.
    return bool(ad.get("PartitionableSlot")) and int(ad.get("NumDynamicSlots") or 0) > 0


# -- The plan -----------------------------------------------------------------------------

@dataclass
class Step:
    """What happens to one existing worker, and why."""

    worker: Worker
    action: str          # delete | drain | keep
    reason: str


@dataclass
class Plan:
    launch: int = 0
    steps: list[Step] = field(default_factory=list)

    def of(self, action: str) -> list[Step]:
        return [step for step in self.steps if step.action == action]


def plan_scale(workers: list[Worker], count: int, now: float, registration_timeout: float) -> Plan:
    """Decide, for the owned workers of one (group, config, cloud), what reaches ``count`` safely.

    A worker with a claimed slot is never deleted. Deleted whatever the count: instances in
    error with nothing claimed, stopped instances without slots, workers never seen in the pool
    ``registration_timeout`` after launch, draining workers with no job left, and workers past
    their maximum lifetime that are not in the pool. Registered workers past their lifetime are
    drained. A worker seen in the pool before whose slots are missing now (collector restart,
    network trouble) is kept, never drained or deleted on that account. Of the remaining
    workers, the surplus is taken idle first (idle longest first), then the ones still starting
    (newest first, deleted: no slots), then busy ones (drained).
    """
    plan = Plan()
    healthy: list[Worker] = []
    for worker in workers:
        age = now - worker.created if worker.created else 0.0
        expired = bool(worker.expires) and now >= worker.expires
        if worker.cloud_state == GONE:
            continue
        if worker.cloud_state == FAILED:
            why = "the instance is in error (%s)" % (worker.fault or worker.cloud_status)
            if not worker.claimed:
                plan.steps.append(Step(worker, "delete", why))
            elif worker.draining:
                plan.steps.append(Step(worker, "keep", why + "; draining, its jobs may finish"))
            else:
                plan.steps.append(_retire(worker, why))
        elif worker.draining or worker.drained or worker.pool_state == DRAINING:
            if worker.drained:
                plan.steps.append(Step(worker, "delete", "drained: no job left on it"))
            elif worker.slots:
                plan.steps.append(Step(worker, "keep", "draining: %d slot%s left, %d claimed"
                                       % (len(worker.slots), "" if len(worker.slots) == 1 else "s", worker.claimed)))
            elif not worker.registered or expired:
                plan.steps.append(Step(worker, "delete", "drained: not in the pool"
                                       + ("; past its maximum lifetime" if expired else "")))
            else:
                plan.steps.append(Step(worker, "keep", "draining; its slots are missing from the collector"))
        elif not worker.slots and not worker.registered and age > registration_timeout:
            plan.steps.append(Step(worker, "delete", "never registered in the pool within %d s" % registration_timeout))
        elif worker.cloud_state == STOPPED and not worker.slots:
            plan.steps.append(Step(worker, "delete", "the instance is stopped (%s)" % worker.cloud_status))
        elif expired:
            plan.steps.append(_retire(worker, "past its maximum lifetime") if worker.slots
                              else Step(worker, "delete", "past its maximum lifetime; not in the pool"))
        else:
            healthy.append(worker)
    surplus = len(healthy) - count
    if surplus < 0:
        plan.launch = -surplus
    removable = sorted(healthy, key=_removal_order)
    for index, worker in enumerate(removable):
        if index < surplus:
            plan.steps.append(_retire(worker, "more workers than the count (%d)" % count))
        else:
            plan.steps.append(Step(worker, "keep", worker.pool_state))
    return plan


def _retire(worker: Worker, why: str) -> Step:
    if worker.slots:
        return Step(worker, "drain", "%s; %s" % (why, "busy, its jobs may finish" if worker.claimed else "idle"))
    if worker.registered:
        # Seen in the pool before, missing now: it may run jobs the collector cannot show.
        return Step(worker, "keep", "%s; its slots are missing from the collector, kept" % why)
    return Step(worker, "delete", "%s; not registered yet" % why)


def _removal_order(worker: Worker) -> tuple[int, float]:
    if worker.slots and not worker.claimed:
        return (0, worker.idle_since)            # idle longest first
    if not worker.slots and not worker.registered:
        return (1, -worker.created)              # starting: newest first
    if worker.slots:
        return (2, -worker.created)              # busy: newest first, the oldest run longest
    return (3, -worker.created)                  # missing from the collector: last, and only kept


# -- HTCondor commands ------------------------------------------------------------------

@dataclass
class Condor:
    """How to run HTCondor tools: locally, or through a prefix (``ssh cm``, ``podman exec cm``)."""

    prefix: list[str]
    trust_domain: str
    identity_prefix: str = "worker-"
    authz: tuple[str, ...] = TOKEN_AUTHZ
    key: str | None = None
    timeout: float = 60.0

    def run(self, argv: list[str], secret: bool = False) -> str:
        command = self.prefix + argv
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=self.timeout, check=False)
        except FileNotFoundError:
            raise HepinfraError("cannot run %s: not found" % command[0],
                                hint="Install HTCondor's tools where the module runs, or set condor.command_prefix")
        except subprocess.TimeoutExpired:
            raise HepinfraError("%s did not answer within %d s" % (argv[0], self.timeout))
        if done.returncode != 0:
            detail = (done.stderr or done.stdout or "").strip().splitlines()
            raise HepinfraError("%s failed (exit %d)%s" % (argv[0], done.returncode,
                                                           ": " + detail[-1] if detail and not secret else ""))
        return done.stdout

    def identity(self, worker_uuid: str) -> str:
        return "%s%s@%s" % (self.identity_prefix, worker_uuid, self.trust_domain)

    def mint(self, worker_uuid: str, lifetime: int) -> str:
        """A token for one worker: its own identity, only the execute-node authorizations, bounded lifetime."""
        argv = ["condor_token_create", "-identity", self.identity(worker_uuid), "-lifetime", str(int(lifetime))]
        for authz in self.authz:
            argv += ["-authz", authz]
        if self.key:
            argv += ["-key", self.key]
        token = self.run(argv, secret=True).strip()
        if token.count(".") != 2:
            raise HepinfraError("condor_token_create printed no token")
        return token

    def slots(self, constraint: str | None = None) -> list[dict[str, Any]]:
        """Startd slot ads from the collector (only the attributes the decision needs)."""
        attributes = ["Name", "Machine", "State", "Activity", "EnteredCurrentState", "PartitionableSlot",
                      "DynamicSlot", "NumDynamicSlots", "SlotType", "Cpus", "Memory", *STARTD_ATTRIBUTES]
        argv = ["condor_status", "-json", "-attributes", ",".join(attributes)]
        if constraint:
            argv += ["-constraint", constraint]
        text = self.run(argv).strip()
        if not text:
            return []
        try:
            ads = json.loads(text)
        except ValueError as exc:
            raise HepinfraError("condor_status printed no JSON: %s" % exc) from exc
        return ads if isinstance(ads, list) else []

    def drain(self, worker: Worker) -> None:
        """Drain the worker's startd gracefully: no new jobs, running ones finish (condor_drain -graceful).

        The startd is named by one of its slots (``slot1@host``): the collector brokers the
        session, which works where the worker cannot verify the caller's token itself.
        """
        names = sorted(str(ad["Name"]) for ad in worker.slots if ad.get("Name") and not ad.get("DynamicSlot"))
        if not names:
            return                                 # not registered: nothing to drain
        # No argument holds a space: a prefix like ssh joins the arguments into one command line.
        self.run(["condor_drain", "-graceful", "-reason", "hepinfra.cloud.worker", names[0]])


def token_claims(token: str) -> dict[str, Any]:
    """The payload of a JWT (not verified: for reporting identity and expiry only)."""
    try:
        payload = token.split(".")[1]
        return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return {}


# -- Audit log ----------------------------------------------------------------------------

def actor() -> str:
    """Who acts: the scheduler's job when known (AWX, Rundeck), and the local user."""
    try:
        import pwd  # pylint: disable=import-outside-toplevel
        user = pwd.getpwuid(os.getuid()).pw_name
    except (ImportError, KeyError):
        user = str(os.getuid())
    parts = [user]
    for variable, label in (("AWX_JOB_ID", "awx-job"), ("TOWER_JOB_ID", "awx-job"), ("RD_JOB_EXECID", "rundeck-execution")):
        if os.environ.get(variable):
            parts.append("%s=%s" % (label, os.environ[variable]))
            break
    return " ".join(parts)


class AuditLog:
    """JSON lines, one per launch, drain or deletion, appended under a lock (several runs may share it)."""

    def __init__(self, path: str | None, who: str) -> None:
        self.path = os.path.expanduser(path) if path else None
        self.who = who
        self.records: list[dict[str, Any]] = []
        self.errors: list[str] = []

    def record(self, event: str, worker: Worker, **extra: Any) -> None:
        entry = {"time": iso_time(time.time()), "event": event, "who": self.who, "cloud": worker.cloud,
                 "group": worker.group, "config": worker.config, "worker": worker.name, "uuid": worker.uuid,
                 "instance_id": worker.instance_id, "flavor": worker.flavor, "image": worker.image,
                 "token_identity": worker.token_identity or None}
        entry.update(extra)
        self.records.append(entry)
        if self.path is None:
            return
        directory = os.path.dirname(self.path)
        if directory:
            try:
                os.makedirs(directory, exist_ok=True)
            except OSError:
                pass                               # reported by the write below
        line = json.dumps(entry, sort_keys=True) + "\n"
        try:
            descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX)
                os.write(descriptor, line.encode())
                if stat.S_ISREG(os.fstat(descriptor).st_mode):  # not a pipe, FIFO or /dev/null
                    os.fsync(descriptor)
            finally:
                os.close(descriptor)
        except OSError as exc:
            # The action happened: keep the record in the result and fail the task at its end.
            self.errors.append("%s %s: %s" % (event, worker.name, exc))


def as_dict(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    return value
