"""make bench-inventory: hepinfra.cloud.cmdb vs netbox.netbox.nb_inventory on one real NetBox.

10,000 hosts (5,000 devices + 5,000 VMs, each with a primary IP, tags and custom fields)
are loaded from a database snapshot (built once with netbox_bulk.py, then cached). Both
plugins then run `ansible-inventory --list` against the same NetBox in the same run: cold
(--flush-cache) and from their cache, several times each. Figures are printed, never
asserted: wall time (median) and peak memory (largest resident set) of the whole command.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hepinfra_testbed import netbox
from hepinfra_testbed.common import cache_dir, log, recipe_hash, run

HERE = Path(__file__).parent
REPEAT = int(os.environ.get("BENCH_REPEAT", "3"))
DEVICES = int(os.environ.get("BENCH_DEVICES", "5000"))
VMS = int(os.environ.get("BENCH_VMS", "5000"))


def bench_dump() -> Path:
    """The NetBox snapshot with the benchmark's hosts (built on first use, then cached)."""
    code = (HERE / "netbox_bulk.py").read_text().replace("DEVICES = 5000", f"DEVICES = {DEVICES}").replace("VMS = 5000", f"VMS = {VMS}")
    dump = cache_dir() / "netbox" / f"bench-{netbox.NETBOX_VERSION}-{recipe_hash(code, netbox.base_dump.__name__)}-{DEVICES}-{VMS}.dump"
    if dump.exists():
        return dump
    instance = netbox.up()
    log(f"creating {DEVICES} devices and {VMS} virtual machines in NetBox (once; kept as {dump.name})")
    run([str(netbox.venv() / "bin/netbox"), "shell", "-c", code], env={"NETBOX_ROOT": instance.root}, timeout=1800)
    netbox.snapshot(dump)
    return dump


def measure(argv: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    """(wall seconds, peak resident MiB, hosts in the output) of one command."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        started = time.perf_counter()
        proc = subprocess.Popen([*argv, "--output", out.name], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        stderr = proc.stderr.read()
        proc.stderr.close()
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}):\n{stderr[-3000:]}")
        data = json.loads(Path(out.name).read_text() or "{}")
    hosts = len(data.get("_meta", {}).get("hostvars", {}))
    return wall, usage.ru_maxrss / 1024, hosts


def main() -> int:
    dump = bench_dump()
    instance = netbox.up(dump)
    work = Path(tempfile.mkdtemp(prefix="bench-inventory-"))
    sources = {
        "hepinfra.cloud.cmdb": ("bench.cmdb.yml", {
            "plugin": "hepinfra.cloud.cmdb", "url": instance.url, "token": instance.token,
            "group_by": ["site", "role", "tag", "status"],
            "cache": True, "cache_plugin": "ansible.builtin.jsonfile", "cache_connection": str(work / "cache-cmdb"), "cache_timeout": 3600,
        }),
        "netbox.netbox.nb_inventory": ("bench.netbox.yml", {
            "plugin": "netbox.netbox.nb_inventory", "api_endpoint": instance.url, "token": instance.token,
            "group_by": ["sites", "device_roles", "tags", "status"], "config_context": False, "interfaces": False,
            "cache": True, "cache_plugin": "ansible.builtin.jsonfile", "cache_connection": str(work / "cache-nb"), "cache_timeout": 3600,
        }),
    }
    env = dict(os.environ, ANSIBLE_INVENTORY_UNPARSED_FAILED="true", ANSIBLE_NOCOLOR="1",
               ANSIBLE_INVENTORY_ENABLED="hepinfra.cloud.cmdb,netbox.netbox.nb_inventory,ansible.builtin.ini")
    empty = work / "empty.ini"
    empty.write_text("")
    rows = []
    baseline = [measure(["ansible-inventory", "-i", str(empty), "--list"], env) for _ in range(REPEAT)]
    rows.append(("ansible-inventory, empty inventory", baseline, None))
    results: dict[str, dict[str, list]] = {}
    for name, (filename, config) in sources.items():
        path = work / filename
        path.write_text(json.dumps(config))
        argv = ["ansible-inventory", "-i", str(path), "--list"]
        cold = [measure([*argv, "--flush-cache"], env) for _ in range(REPEAT)]
        cached = [measure(argv, env) for _ in range(REPEAT)]
        results[name] = {"cold": cold, "cached": cached}
        rows.append((f"{name}, cold", cold, None))
        rows.append((f"{name}, cached", cached, None))
    netbox.down()

    def median(samples, index):
        return statistics.median(sample[index] for sample in samples)

    print()
    print(f"NetBox {netbox.NETBOX_VERSION}, {DEVICES} devices + {VMS} virtual machines, median of {REPEAT} runs of ansible-inventory --list")
    print(f"{'':48} {'wall s':>8} {'peak MiB':>9} {'hosts':>7}")
    for label, samples, _ in rows:
        print(f"{label:48} {median(samples, 0):8.2f} {median(samples, 1):9.0f} {int(median(samples, 2)):7d}")
    ours, theirs = results["hepinfra.cloud.cmdb"], results["netbox.netbox.nb_inventory"]
    print(f"cold speed-up of hepinfra.cloud.cmdb over nb_inventory: {median(theirs['cold'], 0) / median(ours['cold'], 0):.1f}x "
          f"(target >= 10x); cached: {median(ours['cached'], 0):.2f} s (target < 1 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
