# -*- coding: utf-8 -*-
# Copyright: hepinfra.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The scaling decision: from idle jobs, workers and clouds to a launch plan and a retire plan.

Pure Python over plain data (no HTCondor, no cloud), so that it can be unit- and property-tested
and benchmarked on its own. The rules:

- Idle jobs are grouped by their request shape (group, cpus, memory, disk, allowed clouds).
- Jobs are first covered by what is already there or coming: unclaimed room on registered workers
  (idle, or busy with room left) and workers still starting, of the same group (and an allowed
  cloud). Only the rest is demand.
- The rest goes to clouds in priority order (higher first, then name), each on the smallest of the
  cloud's flavors that fits one job (fewest vCPUs, then least RAM, then name), as many workers as the
  jobs need, but never past the cloud's limits (cores, RAM, instances, counting what is already used
  there), its throttle (workers starting at once) or the cycle's launch budget.
- A group with enough idle workers already (``idle_enough``) gets no launches this cycle.
- Jobs that fit no flavor of any allowed cloud are reported as unfit, never launched for; jobs that
  fit but found no room are the shortfall.
- Retire: idle longer than keep-alive, never registered within come-alive, registered but no job
  within job-alive, past the maximum lifetime, or in error. A busy worker is never retired.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Iterable

# Worker states, as the worker module reports them (pool state where registered).
STARTING = "starting"   # launched, not yet in the collector
IDLE = "idle"           # registered, no claimed slot
BUSY = "busy"           # registered, at least one claimed slot
DRAINING = "draining"   # being drained: takes no new jobs
ERROR = "error"         # the cloud reports it failed or stopped
STATES = (STARTING, IDLE, BUSY, DRAINING, ERROR)


@dataclass(frozen=True, order=True)
class Shape:
    """What one idle job asks for. ``clouds`` empty: any cloud."""

    group: str
    cpus: int
    memory_mb: int
    disk_mb: int = 0
    clouds: tuple[str, ...] = ()


@dataclass(frozen=True)
class Flavor:
    """A worker size. ``usable_mb`` is the memory HTCondor will offer jobs on it (the flavor's RAM
    less what the kernel keeps); None: all of ``ram_mb``. Limits count ``ram_mb``."""

    name: str
    vcpus: int
    ram_mb: int
    disk_gb: int = 0
    usable_mb: int | None = None

    @property
    def memory_for_jobs(self) -> int:
        return self.ram_mb if self.usable_mb is None else self.usable_mb

    def jobs_per_worker(self, shape: Shape) -> int:
        """How many jobs of this shape one worker of this flavor runs at once (0: does not fit)."""
        counts = [self.vcpus // max(shape.cpus, 1), self.memory_for_jobs // max(shape.memory_mb, 1)]
        # A flavor without a stated disk (disk_gb 0) is taken to hold what the job asks: the image decides.
        if shape.disk_mb and self.disk_gb:
            counts.append((self.disk_gb * 1024) // shape.disk_mb)
        return max(min(counts), 0)


@dataclass
class Usage:
    cores: int = 0
    ram_mb: int = 0
    instances: int = 0

    def add(self, flavor: Flavor, count: int = 1) -> None:
        self.cores += flavor.vcpus * count
        self.ram_mb += flavor.ram_mb * count
        self.instances += count


@dataclass
class Cloud:
    """A cloud as the decision sees it. Limits left None are unlimited; ``used`` is what already runs
    there (the site's workers, plus the rest of the project when the cloud counts project usage)."""

    name: str
    priority: int = 0
    flavors: list[Flavor] = field(default_factory=list)
    cores: int | None = None
    ram_mb: int | None = None
    instances: int | None = None
    used: Usage = field(default_factory=Usage)
    max_starting: int | None = None
    enabled: bool = True

    def room(self, flavor: Flavor, planned: Usage, starting: int) -> int:
        """How many more workers of ``flavor`` fit within the limits and the throttle."""
        fits = []
        for limit, used, each in ((self.cores, self.used.cores + planned.cores, flavor.vcpus),
                                  (self.ram_mb, self.used.ram_mb + planned.ram_mb, flavor.ram_mb),
                                  (self.instances, self.used.instances + planned.instances, 1)):
            if limit is not None:
                fits.append((limit - used) // each if each > 0 else 0)
        if self.max_starting is not None:
            fits.append(self.max_starting - starting - planned.instances)
        return max(min(fits), 0) if fits else 1 << 62


@dataclass
class Worker:
    name: str
    cloud: str
    group: str
    flavor: str
    state: str
    created: float
    registered: float | None = None     # when it joined the pool
    last_busy: float | None = None      # when it last had a claimed slot (None: never)
    expires: float | None = None        # its maximum lifetime ends
    free_cpus: int = 0                  # unclaimed room (starting: the whole flavor)
    free_memory_mb: int = 0


@dataclass(frozen=True)
class Policy:
    keep_alive: float = 600.0           # idle this long after the last job: retire
    come_alive: float = 1800.0          # not registered this long after launch: retire
    job_alive: float = 1800.0           # registered this long without ever a job: retire
    max_launches: int | None = None     # launches per cycle, over all clouds
    idle_enough: int | None = None      # a group with this many idle workers gets no launch


@dataclass(frozen=True)
class Launch:
    cloud: str
    group: str
    flavor: str
    count: int
    shape: Shape


@dataclass(frozen=True)
class Retire:
    name: str
    cloud: str
    group: str
    reason: str


@dataclass
class Plan:
    launches: list[Launch] = field(default_factory=list)
    retire: list[Retire] = field(default_factory=list)
    shortfall: dict[Shape, int] = field(default_factory=dict)   # jobs that fit somewhere but found no room
    unfit: dict[Shape, int] = field(default_factory=dict)       # jobs no flavor of an allowed cloud can run
    covered: dict[Shape, int] = field(default_factory=dict)     # jobs that idle or starting workers will take
    held_back: dict[str, str] = field(default_factory=dict)     # group -> why it got no launch

    def launched(self) -> dict[tuple[str, str, str], int]:
        """(cloud, group, flavor) -> new workers."""
        out: dict[tuple[str, str, str], int] = {}
        for item in self.launches:
            key = (item.cloud, item.group, item.flavor)
            out[key] = out.get(key, 0) + item.count
        return out


def shapes_of(jobs: Iterable[tuple[Shape, int]]) -> dict[Shape, int]:
    """Sum job counts per shape."""
    out: dict[Shape, int] = {}
    for shape, count in jobs:
        if count > 0:
            out[shape] = out.get(shape, 0) + count
    return out


def _cover(shape: Shape, count: int, workers: list[Worker]) -> int:
    """Take room on idle and starting workers of the shape's group; return the jobs covered."""
    covered = 0
    for target in workers:
        if covered >= count:
            break
        if target.group != shape.group or target.state not in (IDLE, STARTING, BUSY):
            continue
        if shape.clouds and target.cloud not in shape.clouds:
            continue
        fits = min(target.free_cpus // max(shape.cpus, 1), target.free_memory_mb // max(shape.memory_mb, 1))
        take = min(max(fits, 0), count - covered)
        if take:
            target.free_cpus -= take * shape.cpus
            target.free_memory_mb -= take * shape.memory_mb
            covered += take
    return covered


def plan(jobs: dict[Shape, int], clouds: list[Cloud], workers: list[Worker], policy: Policy, now: float) -> Plan:
    """The launch and retire plan of one cycle. ``workers`` is not modified."""
    result = Plan(retire=retire_plan(workers, policy, now))
    retiring = {item.name for item in result.retire}
    room = [replace(w) for w in workers if w.name not in retiring]
    ordered = sorted((c for c in clouds if c.enabled), key=lambda c: (-c.priority, c.name))
    flavors = {c.name: sorted(c.flavors, key=lambda f: (f.vcpus, f.ram_mb, f.disk_gb, f.name)) for c in ordered}
    planned = {c.name: Usage() for c in ordered}
    starting = {c.name: 0 for c in ordered}
    for target in workers:
        if target.state == STARTING and target.cloud in starting:
            starting[target.cloud] += 1
    idle = {}
    for target in room:
        if target.state == IDLE:
            idle[target.group] = idle.get(target.group, 0) + 1
    budget = policy.max_launches
    # Biggest demands first, so that one large group is not starved by many small shapes; ties by shape.
    for shape, count in sorted(jobs.items(), key=lambda item: (-item[1], item[0])):
        if count <= 0:
            continue
        covered = _cover(shape, count, room)
        if covered:
            result.covered[shape] = covered
        left = count - covered
        if not left:
            continue
        allowed = [c for c in ordered if not shape.clouds or c.name in shape.clouds]
        fitting = [(c, next((f for f in flavors[c.name] if f.jobs_per_worker(shape) > 0), None)) for c in allowed]
        fitting = [(c, f) for c, f in fitting if f is not None]
        if not fitting:
            result.unfit[shape] = left
            continue
        if policy.idle_enough is not None and idle.get(shape.group, 0) >= policy.idle_enough:
            result.held_back[shape.group] = "%d idle workers already" % idle.get(shape.group, 0)
            result.shortfall[shape] = left
            continue
        for cloud, flavor in fitting:
            if not left or budget == 0:
                break
            per_worker = flavor.jobs_per_worker(shape)
            want = -(-left // per_worker)
            take = min(want, cloud.room(flavor, planned[cloud.name], starting[cloud.name]))
            if budget is not None:
                take = min(take, budget)
            if take <= 0:
                continue
            planned[cloud.name].add(flavor, take)
            if budget is not None:
                budget -= take
            result.launches.append(Launch(cloud.name, shape.group, flavor.name, take, shape))
            placed = min(left, take * per_worker)
            left -= placed
            # The last new worker may have room left: later shapes of the group can use it.
            on_last = placed - (take - 1) * per_worker
            spare_cpus, spare_mb = flavor.vcpus - on_last * shape.cpus, flavor.memory_for_jobs - on_last * shape.memory_mb
            if spare_cpus > 0 and spare_mb > 0:
                room.append(Worker("(planned %s %d)" % (cloud.name, len(result.launches)), cloud.name, shape.group,
                                   flavor.name, STARTING, now, free_cpus=spare_cpus, free_memory_mb=spare_mb))
        if left:
            result.shortfall[shape] = left
    return result


def retire_plan(workers: Iterable[Worker], policy: Policy, now: float) -> list[Retire]:
    """Workers to retire and why. Busy and draining workers are never in it (a busy worker past its
    lifetime is drained by the worker module; draining ones are already on their way)."""
    out = []
    for target in workers:
        reason = None
        if target.state in (BUSY, DRAINING):
            continue
        if target.state == ERROR:
            reason = "error"
        elif target.expires is not None and now >= target.expires:
            reason = "lifetime"
        elif target.state == STARTING:
            if now - target.created >= policy.come_alive:
                reason = "never registered"
        elif target.state == IDLE:
            if target.last_busy is None:
                since = target.registered if target.registered is not None else target.created
                if now - since >= policy.job_alive:
                    reason = "never ran a job"
            elif now - target.last_busy >= policy.keep_alive:
                reason = "idle"
        if reason:
            out.append(Retire(target.name, target.cloud, target.group, reason))
    return out


# -- reading the queue ----------------------------------------------------------------------

#: The job attributes the decision reads, in the order of ``condor_q -af:t`` (evaluated, tab separated).
JOB_ATTRIBUTES = ("RequestCpus", "RequestMemory", "RequestDisk", "HepinfraGroup", "AcctGroup", "HepinfraClouds",
                  "JobStatus")
IDLE_JOB, RUNNING_JOB = "1", "2"


def queue_argv(schedd: str | None = None) -> list[str]:
    """condor_q for every user's idle and running jobs on one schedd (the local one when None), their
    request attributes evaluated (``-af`` evaluates expressions such as a RequestMemory that depends on
    MemoryUsage)."""
    argv = ["condor_q", "-allusers", "-constraint", "JobStatus == 1 || JobStatus == 2", "-af:t", *JOB_ATTRIBUTES]
    if schedd:
        argv[1:1] = ["-name", schedd]
    return argv


def group_of(explicit: str, accounting: str, accounting_groups: dict[str, str]) -> str | None:
    """A job's group: its HepinfraGroup attribute, else its accounting group mapped by the longest
    configured prefix (``group_atlas.prod.alice`` matches ``group_atlas.prod`` before ``group_atlas``)."""
    if explicit and explicit != "undefined":
        return explicit
    if not accounting or accounting == "undefined":
        return None
    parts = accounting.split(".")
    for length in range(len(parts), 0, -1):
        mapped = accounting_groups.get(".".join(parts[:length]))
        if mapped:
            return mapped
    return None


def _number(text: str) -> int:
    try:
        return int(float(text))
    except ValueError:
        return 0


@dataclass
class Queue:
    """What the schedds hold: idle jobs per shape, running jobs per group, jobs of no group."""

    idle: dict[Shape, int] = field(default_factory=dict)
    running: dict[str, int] = field(default_factory=dict)
    unmatched: int = 0

    def add(self, other: Queue) -> None:
        for shape, count in other.idle.items():
            self.idle[shape] = self.idle.get(shape, 0) + count
        for group, count in other.running.items():
            self.running[group] = self.running.get(group, 0) + count
        self.unmatched += other.unmatched

    def idle_per_group(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for shape, count in self.idle.items():
            out[shape.group] = out.get(shape.group, 0) + count
        return out


def read_queue(text: str, accounting_groups: dict[str, str]) -> Queue:
    """Idle jobs per shape and running jobs per group from ``condor_q ... -af:t`` output; jobs that
    match no group are only counted (idle ones only: running ones are not the decision's business).

    RequestMemory is in MiB and RequestDisk in KiB, as HTCondor has them; a job that asks for less
    than one CPU or no memory counts as one CPU and 1 MiB. A line without JobStatus is an idle job."""
    queue = Queue()
    # Jobs of one batch print the same line: parse each distinct line once.
    lines: dict[str, int] = {}
    for line in text.splitlines():
        lines[line] = lines.get(line, 0) + 1
    for line, times in lines.items():
        if not line.strip():
            continue
        fields = (line.split("\t") + [""] * len(JOB_ATTRIBUTES))[:len(JOB_ATTRIBUTES)]
        cpus, memory, disk, explicit, accounting, clouds, status = (field_.strip() for field_ in fields)
        group = group_of(explicit, accounting, accounting_groups)
        if status == RUNNING_JOB:
            if group is not None:
                queue.running[group] = queue.running.get(group, 0) + times
            continue
        if status not in ("", IDLE_JOB):
            continue
        if group is None:
            queue.unmatched += times
            continue
        targets = () if clouds in ("", "undefined") else tuple(sorted({c.strip() for c in clouds.split(",") if c.strip()}))
        shape = Shape(group, max(_number(cpus), 1), max(_number(memory), 1), -(-_number(disk) // 1024), targets)
        queue.idle[shape] = queue.idle.get(shape, 0) + times
    return queue
