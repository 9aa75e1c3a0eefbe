"""make bench-workers: launch 100 workers with hepinfra.cloud.worker against a loop of openstack.cloud.server.

OpenStack: the testbed's real Keystone, Glance, Placement, Nova (fake driver) and Neutron, user
alpha. Both launch the same 100 servers (flavor w1.small, a tiny qcow2 image, network private)
and wait until every one is ACTIVE; the loop is a task with ``loop`` over 100 names, as sites
write it. libvirt: 100 domains that never boot an OS, on the testbed's libvirtd.

Printed: wall times, the ratio (target 10x or more), deletion times, and the CPU time the
client side used (ansible-playbook and its modules: what the module itself costs, apart from the
cloud's own work). Figures only; nothing is asserted. BENCH_WORKERS sets the number (default
100); BENCH_PARTS=openstack or libvirt runs one part (default both).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "testbed"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import run_module  # noqa: E402
from hepinfra_testbed import guest, openstack  # noqa: E402
from hepinfra_testbed.common import PREFIX, run  # noqa: E402

COUNT = int(os.environ.get("BENCH_WORKERS", "100"))
PARTS = set(os.environ.get("BENCH_PARTS", "openstack,libvirt").split(","))


def client_cpu() -> float:
    """CPU seconds used so far by finished child processes (the playbook runs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def worker_args(cloud: dict, count: int, **extra) -> dict:
    args = {"clouds": [cloud], "group": "bench", "config": "bench", "placements": [{"cloud": cloud["name"], "count": count}],
            "condor": {"tokens": False, "collector": False}, "wait": "active", "wait_timeout": 1800, "parallel": 16,
            "audit_log": os.devnull}
    args.update(extra)
    return args


def server_loop(work: Path, auth: dict, region: str, names: list[str], state: str) -> float:
    """openstack.cloud.server over the names in a loop (waiting for each, its default)."""
    play = [{"hosts": "localhost", "gather_facts": False, "tasks": [{
        "name": "servers", "openstack.cloud.server": {
            "auth": auth, "region_name": region, "name": "{{ item }}", "state": state, "image": "wimg",
            "flavor": "w1.small", "network": "private", "auto_ip": False, "timeout": 600},
        "loop": names}]}]
    (work / "loop.yml").write_text(json.dumps(play))
    started = time.monotonic()
    subprocess.run(["ansible-playbook", "-i", "localhost,", "-c", "local", str(work / "loop.yml")], check=True,
                   capture_output=True, env=dict(os.environ, ANSIBLE_PYTHON_INTERPRETER=sys.executable))
    return time.monotonic() - started


def main() -> int:
    with tempfile.TemporaryDirectory(prefix=f"{PREFIX}-bench-") as tmp:
        work = Path(tmp)
        image = work / "wimg.qcow2"
        run(["qemu-img", "create", "-q", "-f", "qcow2", image, "64M"])
        if "openstack" in PARTS:
            info = openstack.up(compute=True)
            try:
                bench_openstack(work, info, image)
            finally:
                openstack.down()
        if "libvirt" in PARTS:
            bench_libvirt(work, image)
    return 0


def bench_openstack(work: Path, info, image: Path) -> None:
    region = info.compute["region"]
    os_cloud = {"name": "os", "type": "openstack", "openstack": {"auth": info.auth("alpha"), "region_name": region},
                "defaults": {"flavor": "w1.small", "image": "wimg", "network": "private"}}
    run_module(work, "hepinfra.cloud.image", {"clouds": [os_cloud], "name": "wimg", "src": str(image),
                                              "checksum_cache": ""})
    print(f"{COUNT} workers, OpenStack (Nova fake driver, w1.small), each waited for until ACTIVE", flush=True)
    cpu = client_cpu()
    result, module_time = run_module(work, "hepinfra.cloud.worker", worker_args(os_cloud, COUNT))
    module_cpu, cpu = client_cpu() - cpu, client_cpu()
    launched = len(result["clouds"]["os"]["launched"])
    print(f"  hepinfra.cloud.worker:              {module_time:7.1f} s  ({launched} launched; client CPU "
          f"{module_cpu:.1f} s)", flush=True)
    _result, module_delete = run_module(work, "hepinfra.cloud.worker", worker_args(os_cloud, 0, wait="none"))
    print(f"  hepinfra.cloud.worker, count 0:     {module_delete:7.1f} s", flush=True)
    names = [f"bench-loop-{index:03d}" for index in range(COUNT)]
    cpu = client_cpu()
    loop_time = server_loop(work, info.auth("alpha"), region, names, "present")
    loop_cpu = client_cpu() - cpu
    print(f"  loop of openstack.cloud.server:     {loop_time:7.1f} s  (client CPU {loop_cpu:.1f} s)", flush=True)
    loop_delete = server_loop(work, info.auth("alpha"), region, names, "absent")
    print(f"  loop of openstack.cloud.server, absent: {loop_delete:7.1f} s", flush=True)
    print(f"  ratio (loop / module): wall {loop_time / module_time:.1f}x (target >= 10x), "
          f"client CPU {loop_cpu / module_cpu:.1f}x", flush=True)


def bench_libvirt(work: Path, image: Path) -> None:
    guest.daemon_up()
    pool_dir = Path(tempfile.mkdtemp(prefix=f"{PREFIX}-bench-pool-"))
    pool_dir.chmod(0o711)
    pool = f"{PREFIX}-bench-{os.getpid()}"
    run(["virsh", "-c", guest.URI, "pool-create-as", pool, "dir", "--target", pool_dir])
    try:
        lv_cloud = {"name": "lv", "type": "libvirt", "libvirt": {
            "uri": guest.URI, "pool": pool, "domain_type": "qemu",
            "flavors": {"w1.tiny": {"vcpus": 1, "memory_mb": 64}}},
            "defaults": {"flavor": "w1.tiny", "image": "wimg"}}
        run_module(work, "hepinfra.cloud.image", {"clouds": [lv_cloud], "name": "wimg", "src": str(image),
                                                  "checksum_cache": ""})
        print(f"{COUNT} workers, libvirt (domains without an OS, 64 MiB each)", flush=True)
        result, lv_time = run_module(work, "hepinfra.cloud.worker", worker_args(lv_cloud, COUNT))
        print(f"  hepinfra.cloud.worker:              {lv_time:7.1f} s  "
              f"({len(result['clouds']['lv']['launched'])} launched)")
        _result, lv_delete = run_module(work, "hepinfra.cloud.worker", worker_args(lv_cloud, 0, wait="none"))
        print(f"  hepinfra.cloud.worker, count 0:     {lv_delete:7.1f} s")
    finally:
        run(["virsh", "-c", guest.URI, "pool-destroy", pool], check=False)
        run(["rm", "-rf", pool_dir], check=False)


if __name__ == "__main__":
    sys.exit(main())
