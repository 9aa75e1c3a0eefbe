"""make bench-image: a 1 GiB image onto one cloud and onto three in the same run, then a re-run.

The image is a qcow2 holding 1 GiB of incompressible data. Clouds: a real Glance (Keystone +
Glance from the testbed, project alpha, RegionOne), a second real Glance (project beta,
RegionTwo) and a libvirt directory pool, all on this machine. Printed:

* hepinfra.cloud.image onto the one Glance: wall time and MiB/s;
* the same image under another name onto all three clouds in one task: wall time, and its
  ratio to the one-cloud time (target 1.3x or less);
* the three-cloud task again (nothing to do): wall time and bytes sent.

Figures only; nothing is asserted. BENCH_IMAGE_MIB sets the image size.
"""

from __future__ import annotations

import os
import sys
import tempfile
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "testbed"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import run_module  # noqa: E402
from hepinfra_testbed import guest, openstack  # noqa: E402
from hepinfra_testbed.common import PREFIX, run  # noqa: E402

SIZE_MIB = int(os.environ.get("BENCH_IMAGE_MIB", "1024"))


def cpu_seconds() -> dict[str, float]:
    """CPU time used so far by the servers (by process title) and libvirtd."""
    ticks = os.sysconf("SC_CLK_TCK")
    used: dict[str, float] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            title = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        for label in ("glance-RegionOne", "glance-RegionTwo", "keystone"):
            if f"hepinfra-tb-{label}@" in title:
                used[label] = used.get(label, 0.0) + (int(fields[11]) + int(fields[12])) / ticks
        if title.startswith("libvirtd"):
            used["libvirtd"] = used.get("libvirtd", 0.0) + (int(fields[11]) + int(fields[12])) / ticks
    return used


def measured(work: Path, args: dict) -> tuple[dict, float, str]:
    """Run the module; also return the CPU seconds each party used meanwhile."""
    before, children = cpu_seconds(), os.times()
    out, wall = module(work, args)
    after, children_after = cpu_seconds(), os.times()
    parts = {name: after[name] - before.get(name, 0.0) for name in after}
    parts["module"] = (children_after.children_user + children_after.children_system
                       - children.children_user - children.children_system)
    total = sum(parts.values())
    text = ", ".join(f"{name} {seconds:.1f}" for name, seconds in sorted(parts.items()) if seconds >= 0.05)
    return out, wall, f"CPU s: {text}; total {total:.1f} on {os.cpu_count()} cores ({total / wall:.2f} busy)"


def module(work: Path, args: dict) -> tuple[dict, float]:
    return run_module(work, "hepinfra.cloud.image", args)


def main() -> int:
    guest.daemon_up()
    info = openstack.up()
    pool = f"{PREFIX}-bench-image"
    with tempfile.TemporaryDirectory(prefix="hepinfra-bench-image-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        src = work / "worker.qcow2"
        raw = work / "data.raw"
        run(["dd", "if=/dev/urandom", f"of={raw}", "bs=1M", f"count={SIZE_MIB}", "status=none"])
        run(["qemu-img", "convert", "-O", "qcow2", raw, src])
        raw.unlink()
        (work / "pool").mkdir()
        run(["virsh", "-c", guest.URI, "pool-create-as", pool, "dir", "--target", work / "pool"])
        try:
            def cloud(user: str) -> dict:
                return {"name": user, "type": "openstack",
                        "openstack": {"auth": info.auth(user), "region_name": info.region(user)}}

            clouds = [cloud("alpha"), cloud("beta"),
                      {"name": "hv", "type": "libvirt", "libvirt": {"uri": guest.URI, "pool": pool}}]
            size = src.stat().st_size
            print(f"image: qcow2, {size / 2**20:.0f} MiB of random data")
            tag = uuid.uuid4().hex[:6]
            cache = str(work / "checksums.json")
            one, one_time, one_cpu = measured(work, {"clouds": clouds, "targets": ["alpha"], "name": f"bench-one-{tag}",
                                                     "src": str(src), "checksum_cache": ""})
            print(f"1 cloud  (Glance):               {one_time:6.1f} s  {size / 2**20 / one_time:6.1f} MiB/s  "
                  f"sent {one['clouds']['alpha']['bytes_sent'] / 2**20:.0f} MiB")
            print(f"  {one_cpu}")
            three, three_time, three_cpu = measured(work, {"clouds": clouds, "name": f"bench-three-{tag}",
                                                           "src": str(src), "checksum_cache": ""})
            sent = sum(c["bytes_sent"] for c in three["clouds"].values())
            print(f"3 clouds (Glance x2 + libvirt):  {three_time:6.1f} s  ratio to 1 cloud {three_time / one_time:.2f}x "
                  f"(target <= 1.3x)  sent {sent / 2**20:.0f} MiB")
            print("  per cloud: " + ", ".join(f"{n} {c['duration']:.1f} s" for n, c in sorted(three["clouds"].items())))
            print(f"  {three_cpu}")
            for label, use_cache in (("hashing the source", ""), ("checksum cache cold", cache),
                                     ("checksum cache warm", cache)):
                again, again_time = module(work, {"clouds": clouds, "name": f"bench-three-{tag}", "src": str(src),
                                                  "checksum_cache": use_cache})
                sent = sum(c["bytes_sent"] for c in again["clouds"].values())
                print(f"re-run   (3 clouds, unchanged, {label}): {again_time:5.1f} s  sent {sent} bytes  "
                      f"changed={again['changed']}")
            for name in (f"bench-one-{tag}", f"bench-three-{tag}"):
                module(work, {"clouds": clouds, "name": name, "state": "absent"})
        finally:
            run(["virsh", "-c", guest.URI, "pool-destroy", pool], check=False)
            openstack.down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
