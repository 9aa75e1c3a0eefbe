# -*- coding: utf-8 -*-
# Copyright: hepinfra.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import json
import multiprocessing
import time

import pytest

from ansible_collections.hepinfra.cloud.plugins.module_utils import _clouds, _demand as D, _scale_task as S, _workers as W
from ansible_collections.hepinfra.cloud.plugins.module_utils import _worker_clouds as C, _worker_task as T
from ansible_collections.hepinfra.cloud.plugins.module_utils._base import HepinfraError

NOW = 1_800_000_000.0


def params(**extra):
    base = {"groups": [{"name": "atlas", "config": "default", "accounting_groups": ["group_atlas"], "clouds": [],
                        "image": None}],
            "flavors": {}, "schedds": [],
            "policy": {"keep_alive": 600, "come_alive": 1800, "job_alive": 1800, "max_starting": None,
                       "max_launches": None, "idle_enough": None, "memory_reserve_mb": None}}
    base.update(extra)
    return base


def group(name, *prefixes, clouds=()):
    return {"name": name, "config": "default", "accounting_groups": list(prefixes), "clouds": list(clouds), "image": None}


def test_groups_are_checked():
    assert list(S.check(params())) == ["atlas"]
    with pytest.raises(HepinfraError, match="twice"):
        S.check(params(groups=[group("atlas"), group("atlas")]))
    with pytest.raises(HepinfraError, match="group_x is mapped to both atlas and belle"):
        S.check(params(groups=[group("atlas", "group_x"), group("belle", "group_x")]))
    with pytest.raises(HepinfraError, match="empty"):
        S.check(params(groups=[]))
    with pytest.raises(HepinfraError):
        S.check(params(groups=[group("Not_A_Group")]))
    with pytest.raises(HepinfraError, match="flavors.c1 must be a list"):
        S.check(params(flavors={"c1": "m1.large"}))
    with pytest.raises(HepinfraError, match="policy.max_starting"):
        S.check(params(policy={**params()["policy"], "max_starting": -1}))


class Queues:
    """condor_q as two schedds answer it (one fails)."""

    def __init__(self, answers):
        self.answers = answers

    def run(self, argv):
        name = argv[argv.index("-name") + 1] if "-name" in argv else None
        answer = self.answers[name]
        if isinstance(answer, Exception):
            raise answer
        return answer


def test_queues_of_several_schedds_add_up_and_a_silent_one_is_reported():
    groups = S.check(params(groups=[group("atlas", "group_atlas"), group("belle", "group_belle", clouds=["c1", "c2"])]))
    cycle = S.Cycle(started=NOW, groups=groups, clouds=[])
    condor = Queues({
        "s1": "1\t2000\t45\tundefined\tgroup_atlas.prod\tundefined\t1\n"
              "1\t2000\t45\tundefined\tgroup_atlas.prod\tundefined\t2\n"
              "1\t2000\t45\tcms\tundefined\tundefined\t1\n",
        "s2": "1\t2000\t45\tundefined\tgroup_atlas\tundefined\t1\n"
              "2\t4000\t45\tundefined\tgroup_belle\tc2,c3\t1\n"
              "2\t4000\t45\tundefined\tgroup_belle\tc3\t1\n",
        "s3": HepinfraError("condor_q failed (exit 1): cannot reach s3"),
    })
    S.read_queues(cycle, condor, ["s1", "s2", "s3"])
    assert cycle.queue.idle == {D.Shape("atlas", 1, 2000, 1): 2,
                                D.Shape("belle", 2, 4000, 1, ("c2",)): 1,      # the job's clouds within the group's
                                D.Shape("belle", 2, 4000, 1, ("-",)): 1}       # none left: fits nowhere
    assert cycle.queue.running == {"atlas": 1}
    assert cycle.queue.unmatched == 1                                         # HepinfraGroup cms is not scaled
    assert cycle.schedds["s1"] == {"ok": True, "error": None, "idle": 2, "running": 1}
    assert not cycle.schedds["s3"]["ok"] and cycle.errors == ["schedd s3: condor_q failed (exit 1): cannot reach s3."]


def slot(**ad):
    return {"Name": "slot1@w", "State": "Unclaimed", "Activity": "Idle", **ad}


def worker(**extra):
    base = {"name": "atlas--c1--u", "uuid": "u", "cloud": "c1", "group": "atlas", "config": "default",
            "instance_id": "i", "cloud_state": W.ACTIVE, "flavor": "m", "created": NOW - 100}
    base.update(extra)
    return W.Worker(**base)


def test_pool_states_and_free_room_as_the_decision_sees_them():
    starting = worker()
    W.attach_slots([starting], [])
    assert S.decision_state(starting) == D.STARTING
    lost = worker(registered_at=NOW - 50)            # was in the pool, slots missing now: never retired
    W.attach_slots([lost], [])
    assert S.decision_state(lost) == D.BUSY
    broken = worker(cloud_state=W.FAILED)
    W.attach_slots([broken], [])
    assert S.decision_state(broken) == D.ERROR
    stopped = worker(cloud_state=W.STOPPED)
    assert S.decision_state(stopped) == D.ERROR
    # A partitionable slot with one dynamic slot carved out: busy, with what the partitionable slot has left.
    busy = worker()
    W.attach_slots([busy], [slot(PartitionableSlot=True, NumDynamicSlots=1, Cpus=3, Memory=3000, HepinfraWorkerUuid="u"),
                            slot(Name="slot1_1@w", State="Claimed", Activity="Busy", DynamicSlot=True, Cpus=1,
                                 Memory=1000, HepinfraWorkerUuid="u")])
    assert S.decision_state(busy) == D.BUSY and S._free(busy) == (3, 3000)  # pylint: disable=protected-access
    idle = worker()
    W.attach_slots([idle], [slot(PartitionableSlot=True, NumDynamicSlots=0, Cpus=4, Memory=7800, HepinfraWorkerUuid="u")])
    assert S.decision_state(idle) == D.IDLE and S._free(idle) == (4, 7800)  # pylint: disable=protected-access
    draining = worker(draining_since=NOW - 5)
    W.attach_slots([draining], [slot(HepinfraWorkerUuid="u", Cpus=4, Memory=100)])
    assert S.decision_state(draining) == D.DRAINING


def test_busy_marks_are_rare_but_keep_keep_alive():
    assert S.busy_mark_interval({"keep_alive": 600}) == 150
    assert S.busy_mark_interval({"keep_alive": 30}) == 30          # never more often than every 30 s
    assert S.busy_mark_interval({"keep_alive": 86400}) == 300      # never staler than 5 min


def _hold(path, ready, release):
    with S.CycleLock(path, 5):
        ready.set()
        release.wait(10)


def test_the_cycle_lock_excludes_another_process_and_names_the_holder(tmp_path):
    path = str(tmp_path / "state" / "scale.lock")
    context = multiprocessing.get_context("fork")
    ready, release = context.Event(), context.Event()
    holder = context.Process(target=_hold, args=(path, ready, release))
    holder.start()
    try:
        assert ready.wait(10)
        started = time.monotonic()
        with pytest.raises(HepinfraError, match=r"another scaling cycle holds the lock .*\(pid %d on " % holder.pid):
            with S.CycleLock(path, 1):
                pass
        assert time.monotonic() - started >= 1
    finally:
        release.set()
        holder.join(10)
    # Released with its process: the next cycle takes it at once.
    with S.CycleLock(path, 0) as lock:
        assert lock.waited < 1


def test_a_killed_cycle_leaves_no_stale_lock(tmp_path):
    path = str(tmp_path / "scale.lock")
    context = multiprocessing.get_context("fork")
    ready, release = context.Event(), context.Event()
    holder = context.Process(target=_hold, args=(path, ready, release))
    holder.start()
    assert ready.wait(10)
    holder.kill()
    holder.join(10)
    with S.CycleLock(path, 0):
        pass


def test_history_lines_append(tmp_path):
    result = {"duration": 1.5, "jobs": {"atlas": {"idle": 3, "running": 1}}, "unmatched_jobs": 0,
              "workers": {"c1": {"busy": 1}}, "launched_per_cloud": {"c1": {"atlas": 2}}, "drained": ["a"],
              "deleted": ["a", "b"], "shortfall": {}, "unfit": {"atlas": 1}, "errors": []}
    path = tmp_path / "d" / "history.jsonl"
    S.append_history(str(path), S.history_line(result, NOW))
    S.append_history(str(path), S.history_line(result, NOW + 60))
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["time"] for line in lines] == ["2027-01-15T08:00:00Z", "2027-01-15T08:01:00Z"]
    assert lines[0]["launched"] == {"c1": {"atlas": 2}} and lines[0]["drained"] == 1 and lines[0]["deleted"] == 2


def clouds(*entries):
    return sorted(_clouds.normalize(list(entries)).values(), key=lambda c: (-c.priority, c.name))


def libvirt(name, **extra):
    return {"name": name, "type": "libvirt", "libvirt": {"uri": "qemu:///system", "pool": "p",
                                                         "flavors": {"w": {"vcpus": 2, "memory_mb": 2048}}}, **extra}


def openstack(name, **extra):
    return {"name": name, "type": "openstack", "openstack": {"cloud": name}, **extra}


def test_every_cloud_a_group_may_use_must_host_its_workers():
    groups = S.check(params(groups=[group("atlas", clouds=["os1", "hv1"]), group("belle")]))
    groups["atlas"].image = "img"
    ok = clouds(libvirt("hv1", defaults={"image": "img"}), openstack("os1", defaults={"network": "n", "image": "img"}))
    S.check_clouds(groups, ok)
    with pytest.raises(HepinfraError) as caught:
        S.check_clouds(groups, clouds(libvirt("hv1"), openstack("os1"), libvirt("hv--2", enabled=False),
                                      libvirt("x--y")))
    text = str(caught.value)
    assert "cloud os1 has no defaults.network" in text                     # workers could not reach the pool
    assert "group belle has no image on cloud hv1" in text
    assert "x--y" in text                                                   # not a valid part of a worker name
    assert "hv--2" not in text                                              # disabled: no launch there
    with pytest.raises(HepinfraError, match="group atlas names unknown clouds: os1"):
        S.check_clouds(groups, clouds(libvirt("hv1", defaults={"image": "img"})))


def listing(cloud, workers, error=None):
    run = T.CloudRun(T.Placement(cloud=cloud, count=0), workers=workers)
    run.error = error
    return run


def test_the_decision_sees_only_the_scaled_groups_and_clouds_that_answered():
    groups = S.check(params(groups=[group("atlas")]))
    hv1, hv2, os1 = clouds(libvirt("hv1", limits={"cores": 10}), libvirt("hv2"),
                           openstack("os1", limits={"instances": 20, "count_project_usage": True}))
    cycle = S.Cycle(started=NOW, groups=groups, clouds=[hv1, hv2, os1])
    starting = worker(name="atlas--hv1--u1", uuid="u1", cloud="hv1", flavor="w")
    other_config = worker(name="atlas--hv1--u2", uuid="u2", cloud="hv1", flavor="w", config="manual")
    other_group = worker(name="cms--hv1--u3", uuid="u3", cloud="hv1", group="cms", flavor="w")
    lost = worker(name="atlas--hv2--u4", uuid="u4", cloud="hv2", flavor="w")
    for item in (starting, other_config, other_group, lost):
        W.attach_slots([item], [])
    cycle.runs = {"hv1": listing(hv1, [starting, other_config, other_group]), "hv2": listing(hv2, [lost], "down"),
                  "os1": listing(os1, [])}
    size = C.Flavor("w", 2, 2048)
    cycle.cloud_info = {"hv1": {"ok": True, "flavors": [size], "sizes": {"w": size}},
                        "hv2": {"ok": False, "error": "down"},
                        "os1": {"ok": True, "flavors": [C.Flavor("m1", 4, 8192)], "sizes": {},
                                "usage": C.Usage(cores=30, ram_mb=60000, instances=12,
                                                 quota={"cores": 40, "ram_mb": None, "instances": 50})}}
    S.build(cycle, params()["policy"], NOW)
    assert [w.name for w in cycle.workers] == ["atlas--hv1--u1"]             # not another config, group or cloud
    assert (cycle.workers[0].state, cycle.workers[0].free_cpus, cycle.workers[0].free_memory_mb) == (D.STARTING, 2, 1946)
    by_name = {c.name: c for c in cycle.decision_clouds}
    assert sorted(by_name) == ["hv1", "os1"]                                 # hv2 did not answer: left out
    # Every owned worker counts against the cloud's limits, whatever its group or config.
    assert (by_name["hv1"].used.cores, by_name["hv1"].used.instances, by_name["hv1"].cores) == (6, 3, 10)
    # Project usage and Nova's quota: the tighter of the site's limit and the quota.
    assert (by_name["os1"].used.cores, by_name["os1"].cores, by_name["os1"].instances) == (30, 40, 20)
    assert by_name["os1"].flavors == [D.Flavor("m1", 4, 8192, 0, 7783)]


def test_a_draining_worker_is_never_drained_again():
    retire = {"atlas--c1--a": D.Retire("atlas--c1--a", "c1", "atlas", "error"),
              "atlas--c1--b": D.Retire("atlas--c1--b", "c1", "atlas", "idle")}
    policy = params()["policy"]
    failing = worker(name="atlas--c1--a", uuid="a", cloud_state=W.FAILED, draining_since=NOW - 60)
    idle = worker(name="atlas--c1--b", uuid="b")
    claimed = slot(HepinfraWorkerUuid="a", State="Claimed", Activity="Busy")
    W.attach_slots([failing, idle], [claimed, slot(HepinfraWorkerUuid="b", Cpus=2, Memory=2000)])
    steps = {step.worker.name: step for step in S.retire_steps([failing, idle], retire, policy, NOW).steps}
    assert steps["atlas--c1--a"].action == "keep"                 # its job may finish; drained once already
    assert steps["atlas--c1--b"].action == "drain" and steps["atlas--c1--b"].reason.startswith(
        "idle longer than keep_alive (600 s)")
