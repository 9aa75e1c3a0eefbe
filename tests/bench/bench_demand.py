"""The scaling decision on a large site: 100,000 idle jobs in 500 request shapes, 30 clouds of 8
flavors each with limits and throttles, 2,000 workers. Prints the wall time and peak memory of the
decision itself (grouping the jobs by shape, the launch plan and the retire plan), best of 5.

    make bench-demand            (or: python tests/bench/bench_demand.py [jobs] [shapes] [clouds])

Target: under 1 s for the decision.
"""

from __future__ import annotations

import gc
import random
import sys
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / ".tmp" / "collections"))

from ansible_collections.hepinfra.cloud.plugins.module_utils import _demand as D  # noqa: E402  pylint: disable=wrong-import-position

NOW = 1_800_000_000.0


def site(jobs: int, shapes: int, clouds: int, seed: int = 7):
    rng = random.Random(seed)
    groups = ["group%02d" % i for i in range(20)]
    cloud_names = ["cloud%02d" % i for i in range(clouds)]
    kinds: set[D.Shape] = set()
    while len(kinds) < shapes:
        kinds.add(D.Shape(rng.choice(groups), rng.choice([1, 1, 1, 2, 4, 8]), rng.randrange(500, 16001, 500),
                          rng.choice([0, 0, 10240, 51200]),
                          tuple(sorted(rng.sample(cloud_names, 3))) if rng.random() < 0.2 else ()))
    kinds_list = sorted(kinds)
    idle_jobs = [(rng.choice(kinds_list), 1) for _index in range(jobs)]
    sizes = [(1, 2048), (2, 4096), (4, 8192), (8, 16384), (8, 32768), (16, 32768), (16, 65536), (32, 131072)]
    cloud_list = [D.Cloud(name, rng.randint(0, 5), [D.Flavor("f%d" % i, c, m, rng.choice([0, 40, 160]))
                                                    for i, (c, m) in enumerate(sizes)],
                          cores=rng.choice([None, 500, 2000]), ram_mb=rng.choice([None, 4_000_000]),
                          instances=rng.choice([None, 100, 400]), used=D.Usage(rng.randint(0, 400), 0, rng.randint(0, 80)),
                          max_starting=rng.choice([None, 20, 50]))
                  for name in cloud_names]
    workers = [D.Worker("w%d" % i, rng.choice(cloud_names), rng.choice(groups), "f1",
                        rng.choice(D.STATES), NOW - rng.uniform(0, 86400), registered=NOW - rng.uniform(0, 80000),
                        last_busy=rng.choice([None, NOW - rng.uniform(0, 4000)]), expires=NOW + rng.uniform(-100, 86400),
                        free_cpus=rng.choice([0, 0, 2, 8]), free_memory_mb=rng.choice([0, 4096, 16384]))
               for i in range(2000)]
    return idle_jobs, cloud_list, workers


def queue_text(idle_jobs) -> str:
    """The idle jobs as condor_q -af:t prints them (queue_argv's attributes), half with an accounting group."""
    lines = []
    for index, (shape, _count) in enumerate(idle_jobs):
        clouds = ",".join(shape.clouds) or "undefined"
        if index % 2:
            lines.append("%d\t%d\t%d\t%s\tundefined\t%s\t1" % (
                shape.cpus, shape.memory_mb, shape.disk_mb * 1024, shape.group, clouds))
        else:
            lines.append("%d\t%d\t%d\tundefined\tgroup_%s.prod.user%d\t%s\t1" % (
                shape.cpus, shape.memory_mb, shape.disk_mb * 1024, shape.group, index % 50, clouds))
    return "\n".join(lines) + "\n"


def decide(idle_jobs, cloud_list, workers):
    return D.plan(D.shapes_of(idle_jobs), cloud_list, workers, D.Policy(max_launches=500, idle_enough=20), NOW)


def main() -> None:
    jobs, shapes, clouds = (int(a) for a in (sys.argv[1:] + ["100000", "500", "30"][len(sys.argv) - 1:])[:3])
    idle_jobs, cloud_list, workers = site(jobs, shapes, clouds)
    times = []
    for _run in range(5):
        gc.collect()
        started = time.perf_counter()
        result = decide(idle_jobs, cloud_list, workers)
        times.append(time.perf_counter() - started)
    gc.collect()
    tracemalloc.start()
    decide(idle_jobs, cloud_list, workers)
    _current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    text = queue_text(idle_jobs)
    mapping = {"group_%s" % shape.group: shape.group for shape, _count in idle_jobs}
    reads = []
    for _run in range(5):
        gc.collect()
        started = time.perf_counter()
        queue = D.read_queue(text, mapping)
        reads.append(time.perf_counter() - started)
    assert sum(queue.idle.values()) == jobs and queue.idle == D.shapes_of(idle_jobs)
    launched = sum(item.count for item in result.launches)
    print(f"bench-demand: {jobs} idle jobs in {len({shape for shape, _count in idle_jobs})} shapes, {clouds} clouds, "
          f"{len(workers)} workers")
    print(f"  decision: best {min(times) * 1000:.1f} ms, median {sorted(times)[2] * 1000:.1f} ms (5 runs; target < 1000 ms)")
    print(f"  memory: {peak / 2**20:.1f} MiB allocated at peak by the decision (tracemalloc)")
    print(f"  reading condor_q output ({len(text) / 2**20:.1f} MiB, {jobs} lines) into shapes: best {min(reads) * 1000:.1f} ms")
    print(f"  plan: {launched} launches on {len({i.cloud for i in result.launches})} clouds, {len(result.retire)} to retire, "
          f"{sum(result.shortfall.values())} jobs short, {sum(result.unfit.values())} unfit, "
          f"{sum(result.covered.values())} covered by workers there")


if __name__ == "__main__":
    main()
