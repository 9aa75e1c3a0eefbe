# -*- coding: utf-8 -*-
# Copyright: hepinfra.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

from hypothesis import given, settings, strategies as st

from ansible_collections.hepinfra.cloud.plugins.module_utils import _demand as D

NOW = 1_800_000_000.0
SMALL, LARGE = D.Flavor("s", 2, 4096), D.Flavor("l", 8, 16384, 80)


def cloud(name, priority=0, flavors=(SMALL, LARGE), **extra):
    return D.Cloud(name, priority, list(flavors), **extra)


def worker(name, state, cloud_name="a", group="atlas", cpus=2, memory=4096, **extra):
    extra.setdefault("created", NOW - 60)
    return D.Worker(name, cloud_name, group, "s", state, free_cpus=cpus, free_memory_mb=memory, **extra)


def test_smallest_fitting_flavor_on_the_cloud_of_highest_priority():
    jobs = {D.Shape("atlas", 1, 2000): 5, D.Shape("belle", 4, 8000): 1}
    result = D.plan(jobs, [cloud("low", 1), cloud("high", 5)], [], D.Policy(), NOW)
    assert result.launched() == {("high", "atlas", "s"): 3, ("high", "belle", "l"): 1}
    assert not result.shortfall and not result.unfit


def test_a_cloud_at_its_limit_passes_the_launch_to_the_next():
    full = cloud("first", 9, cores=10, used=D.Usage(cores=10))
    result = D.plan({D.Shape("atlas", 2, 4096): 4}, [full, cloud("second", 1)], [], D.Policy(), NOW)
    assert result.launched() == {("second", "atlas", "s"): 4}


def test_limits_count_planned_workers_and_the_rest_is_shortfall():
    small = cloud("only", instances=3, ram_mb=100000, used=D.Usage(instances=1))
    result = D.plan({D.Shape("atlas", 2, 4096): 10}, [small], [], D.Policy(), NOW)
    assert result.launched() == {("only", "atlas", "s"): 2}
    assert result.shortfall == {D.Shape("atlas", 2, 4096): 8}


def test_throttles_starting_per_cloud_and_launches_per_cycle():
    one = cloud("one", 2, max_starting=3)
    two = cloud("two", 1)
    starting = [worker("w0", D.STARTING, "one", group="other")]
    result = D.plan({D.Shape("atlas", 2, 4096): 10}, [one, two], starting, D.Policy(max_launches=6), NOW)
    assert result.launched() == {("one", "atlas", "s"): 2, ("two", "atlas", "s"): 4}
    assert result.shortfall == {D.Shape("atlas", 2, 4096): 4}


def test_idle_and_starting_workers_cover_jobs_before_any_launch():
    workers = [worker("w1", D.IDLE, cpus=2), worker("w2", D.STARTING, cpus=2), worker("w3", D.BUSY, cpus=0),
               worker("w5", D.BUSY, cpus=1, memory=2048), worker("w6", D.DRAINING, cpus=2),
               worker("w4", D.IDLE, group="belle", cpus=8, memory=16384)]
    result = D.plan({D.Shape("atlas", 1, 1024): 7}, [cloud("a")], workers, D.Policy(), NOW)
    # idle, starting and the room left on a busy worker; not a full busy one, a draining one, another group's
    assert result.covered == {D.Shape("atlas", 1, 1024): 5}
    assert result.launched() == {("a", "atlas", "s"): 1}


def test_enough_idle_workers_hold_back_launches():
    workers = [worker("w%d" % i, D.IDLE, cpus=0, memory=0, last_busy=NOW - 5) for i in range(3)]
    result = D.plan({D.Shape("atlas", 1, 1024): 5}, [cloud("a")], workers, D.Policy(idle_enough=3), NOW)
    assert result.launches == [] and "atlas" in result.held_back
    assert result.shortfall == {D.Shape("atlas", 1, 1024): 5}


def test_jobs_no_flavor_fits_are_reported_not_launched_for():
    huge = D.Shape("atlas", 64, 1024)
    pinned = D.Shape("belle", 1, 1024, clouds=("nowhere",))
    disk = D.Shape("lsst", 1, 1024, disk_mb=200 * 1024)
    result = D.plan({huge: 2, pinned: 3, disk: 1}, [cloud("a", flavors=[LARGE])], [], D.Policy(), NOW)
    assert result.launches == []
    assert result.unfit == {huge: 2, pinned: 3, disk: 1}


def test_target_clouds_are_respected():
    shape = D.Shape("atlas", 1, 1024, clouds=("b",))
    result = D.plan({shape: 2}, [cloud("a", 9), cloud("b", 1)], [], D.Policy(), NOW)
    assert result.launched() == {("b", "atlas", "s"): 1}


def test_retire_reasons_and_never_a_busy_worker():
    policy = D.Policy(keep_alive=600, come_alive=1800, job_alive=900)
    workers = [
        worker("idle-long", D.IDLE, registered=NOW - 5000, last_busy=NOW - 700),
        worker("idle-short", D.IDLE, registered=NOW - 5000, last_busy=NOW - 100),
        worker("late", D.STARTING, created=NOW - 1900),
        worker("coming", D.STARTING, created=NOW - 100),
        worker("jobless", D.IDLE, registered=NOW - 1000),
        worker("old", D.IDLE, registered=NOW - 100, expires=NOW - 1),
        worker("broken", D.ERROR),
        worker("busy-old", D.BUSY, registered=NOW - 9000, expires=NOW - 1),
        worker("draining", D.DRAINING, registered=NOW - 9000, last_busy=NOW - 9000),
    ]
    reasons = {r.name: r.reason for r in D.retire_plan(workers, policy, NOW)}
    assert reasons == {"idle-long": "idle", "late": "never registered", "jobless": "never ran a job",
                       "old": "lifetime", "broken": "error"}


# -- properties -------------------------------------------------------------------------------

GROUPS = ["atlas", "belle", "lsst"]
shapes = st.builds(D.Shape, st.sampled_from(GROUPS), st.integers(1, 16), st.integers(256, 40000),
                   st.sampled_from([0, 0, 10240, 500000]),
                   st.sampled_from([(), ("c0",), ("c1", "c2")]))
flavors = st.builds(D.Flavor, st.sampled_from(["f1", "f2", "f3", "f4"]), st.integers(1, 32),
                    st.integers(512, 65536), st.sampled_from([0, 20, 200]))
limits = st.one_of(st.none(), st.integers(0, 200))


@st.composite
def clouds(draw):
    out = []
    for index in range(draw(st.integers(0, 4))):
        named = {f.name: f for f in draw(st.lists(flavors, max_size=4))}
        used = D.Usage(draw(st.integers(0, 50)), draw(st.integers(0, 50000)), draw(st.integers(0, 20)))
        out.append(D.Cloud("c%d" % index, draw(st.integers(0, 3)), list(named.values()), draw(limits),
                           draw(st.one_of(st.none(), st.integers(0, 400000))), draw(limits), used,
                           draw(st.one_of(st.none(), st.integers(0, 10))), draw(st.booleans())))
    return out


workers = st.lists(st.builds(
    D.Worker, st.uuids().map(str), st.sampled_from(["c0", "c1", "c2"]), st.sampled_from(GROUPS), st.just("f1"),
    st.sampled_from(D.STATES), st.floats(NOW - 10000, NOW),
    registered=st.one_of(st.none(), st.floats(NOW - 10000, NOW)),
    last_busy=st.one_of(st.none(), st.floats(NOW - 10000, NOW)),
    expires=st.one_of(st.none(), st.floats(NOW - 100, NOW + 100000)),
    free_cpus=st.integers(0, 16), free_memory_mb=st.integers(0, 65536)), max_size=12)
policies = st.builds(D.Policy, st.floats(0, 5000), st.floats(0, 5000), st.floats(0, 5000),
                     st.one_of(st.none(), st.integers(0, 30)), st.one_of(st.none(), st.integers(1, 5)))


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(shapes, st.integers(0, 500), max_size=8), clouds(), workers, policies)
def test_plan_properties(jobs, cloud_list, worker_list, policy):
    before = [(w.free_cpus, w.free_memory_mb) for w in worker_list]
    result = D.plan(jobs, cloud_list, worker_list, policy, NOW)
    by_name = {c.name: c for c in cloud_list}
    waiting = {s.group for s, n in jobs.items() if n > 0}
    # Never past a limit, a throttle or the launch budget.
    starting = {}
    for target in worker_list:
        if target.state == D.STARTING:
            starting[target.cloud] = starting.get(target.cloud, 0) + 1
    for name, target in by_name.items():
        planned = D.Usage()
        for (cloud_name, _group, flavor_name), count in result.launched().items():
            if cloud_name == name:
                assert target.enabled
                planned.add(next(f for f in target.flavors if f.name == flavor_name), count)
        for limit, used in ((target.cores, target.used.cores + planned.cores),
                            (target.ram_mb, target.used.ram_mb + planned.ram_mb),
                            (target.instances, target.used.instances + planned.instances)):
            assert limit is None or planned.instances == 0 or used <= limit
        if target.max_starting is not None and planned.instances:
            assert starting.get(name, 0) + planned.instances <= target.max_starting
    total = sum(item.count for item in result.launches)
    assert policy.max_launches is None or total <= policy.max_launches
    for item in result.launches:
        assert item.count > 0
        # Never for a group with no waiting jobs; only where the job may go; a flavor that fits it.
        assert item.group in waiting and item.group == item.shape.group
        assert not item.shape.clouds or item.cloud in item.shape.clouds
        flavor = next(f for f in by_name[item.cloud].flavors if f.name == item.flavor)
        assert flavor.jobs_per_worker(item.shape) > 0
        # Never more workers than the shape's jobs need.
        assert item.count <= jobs[item.shape]
    # Jobs no flavor fits are reported and get nothing.
    for shape in result.unfit:
        assert not [item for item in result.launches if item.shape == shape]
    # Every waiting job is accounted for at most once.
    for shape, count in jobs.items():
        assert result.covered.get(shape, 0) + result.unfit.get(shape, 0) + result.shortfall.get(shape, 0) <= count
    # A busy or draining worker is never retired.
    states = {w.name: w.state for w in worker_list}
    assert not [r for r in result.retire if states[r.name] in (D.BUSY, D.DRAINING)]
    # The caller's workers are left as they were.
    assert [(w.free_cpus, w.free_memory_mb) for w in worker_list] == before


# -- reading the queue ------------------------------------------------------------------------

def test_groups_come_from_the_job_or_the_longest_accounting_prefix():
    mapping = {"group_atlas": "atlas", "group_atlas.prod": "atlas-prod"}
    assert D.group_of("belle", "group_atlas.prod", mapping) == "belle"
    assert D.group_of("undefined", "group_atlas.prod.alice", mapping) == "atlas-prod"
    assert D.group_of("", "group_atlas.test", mapping) == "atlas"
    assert D.group_of("undefined", "group_cms", mapping) is None
    assert D.group_of("undefined", "undefined", mapping) is None


def test_queue_lines_become_shapes():
    text = ("1\t2048\t1000000\tundefined\tgroup_atlas.prod.alice\tundefined\n"
            "1\t2048\t999999\tundefined\tgroup_atlas.prod.bob\tundefined\n"
            "4\t8000\t0\tbelle\tundefined\tc2, c1\n"
            "0.5\t0\t10\tundefined\tgroup_cms\tundefined\n"
            "1\t2048\t10\tundefined\tgroup_atlas.prod\tundefined\t2\n"
            "1\t2048\t10\tundefined\tgroup_cms\tundefined\t2\n"
            "1\t2048\t10\tundefined\tgroup_atlas.prod\tundefined\t5\n"
            "\n")
    queue = D.read_queue(text, {"group_atlas.prod": "atlas"})
    assert queue.idle == {D.Shape("atlas", 1, 2048, 977): 2, D.Shape("belle", 4, 8000, 0, ("c1", "c2")): 1}
    assert queue.running == {"atlas": 1}      # the running job of no group and the held job are not counted
    assert queue.unmatched == 1
    assert queue.idle_per_group() == {"atlas": 2, "belle": 1}
    assert D.queue_argv("schedd@sub1")[:3] == ["condor_q", "-name", "schedd@sub1"]


def test_queue_as_htcondor_prints_it():
    # Recorded from condor_q 25 on the test bed's pool (queue_argv()): 3 jobs with requests,
    # HepinfraGroup and HepinfraClouds; 2 in accounting group group_atlas.prod; 1 with neither.
    recorded = ("2\t3000\t2000000\tbelle\tundefined\tc2,c1\n" * 3
                + "1\t1\t45\tundefined\tgroup_atlas.prod\tundefined\n" * 2
                + "1\t1\t45\tundefined\tundefined\tundefined\n")
    queue = D.read_queue(recorded, {"group_atlas": "atlas"})
    assert queue.idle == {D.Shape("belle", 2, 3000, 1954, ("c1", "c2")): 3, D.Shape("atlas", 1, 1, 1): 2}
    assert queue.unmatched == 1


def test_room_left_on_new_workers_serves_the_next_shapes_of_the_group():
    jobs = {D.Shape("atlas", 1, 1000): 3, D.Shape("atlas", 1, 500): 1, D.Shape("belle", 1, 500): 1}
    result = D.plan(jobs, [cloud("a", flavors=(SMALL,))], [], D.Policy(), NOW)
    # 3 jobs: 2 workers of 2 cores, the second half full; the 500 MiB job takes that half, not a third
    # worker. Another group's job does not.
    assert result.launched() == {("a", "atlas", "s"): 2, ("a", "belle", "s"): 1}


def test_usable_memory_decides_the_fit_and_limits_count_the_whole_flavor():
    flavor = D.Flavor("m", 2, 4096, usable_mb=3800)
    jobs = {D.Shape("atlas", 1, 4000): 1, D.Shape("atlas", 1, 1900): 4}
    result = D.plan(jobs, [cloud("a", flavors=(flavor,), ram_mb=8192)], [], D.Policy(), NOW)
    assert result.unfit == {D.Shape("atlas", 1, 4000): 1}       # fits 4096 on paper, not what HTCondor offers
    assert result.launched() == {("a", "atlas", "m"): 2}        # 2 x 1900 per worker; 2 x 4096 reaches the limit
