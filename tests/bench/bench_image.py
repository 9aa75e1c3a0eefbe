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

import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "testbed"))

from hepinfra_testbed import guest, openstack  # noqa: E402
from hepinfra_testbed.common import PREFIX, run  # noqa: E402

SIZE_MIB = int(os.environ.get("BENCH_IMAGE_MIB", "1024"))


def module(work: Path, args: dict) -> tuple[dict, float]:
    (work / "args.json").write_text(json.dumps({"module_args": args}))
    play = [{"hosts": "localhost", "gather_facts": False, "vars_files": [str(work / "args.json")], "tasks": [
        {"name": "image", "hepinfra.cloud.image": "{{ module_args }}", "register": "out"},
        {"name": "keep", "ansible.builtin.copy": {"content": "{{ out | to_json }}", "dest": str(work / "out.json")}},
    ]}]
    (work / "play.yml").write_text(json.dumps(play))
    started = time.monotonic()
    subprocess.run(["ansible-playbook", "-i", "localhost,", "-c", "local", str(work / "play.yml")], check=True,
                   capture_output=True, env=dict(os.environ, ANSIBLE_PYTHON_INTERPRETER=sys.executable))
    return json.loads((work / "out.json").read_text()), time.monotonic() - started


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
            one, one_time = module(work, {"clouds": clouds, "targets": ["alpha"], "name": f"bench-one-{tag}",
                                          "src": str(src)})
            print(f"1 cloud  (Glance):               {one_time:6.1f} s  {size / 2**20 / one_time:6.1f} MiB/s  "
                  f"sent {one['clouds']['alpha']['bytes_sent'] / 2**20:.0f} MiB")
            three, three_time = module(work, {"clouds": clouds, "name": f"bench-three-{tag}", "src": str(src)})
            sent = sum(c["bytes_sent"] for c in three["clouds"].values())
            print(f"3 clouds (Glance x2 + libvirt):  {three_time:6.1f} s  ratio to 1 cloud {three_time / one_time:.2f}x "
                  f"(target <= 1.3x)  sent {sent / 2**20:.0f} MiB")
            print("  per cloud: " + ", ".join(f"{n} {c['duration']:.1f} s" for n, c in sorted(three["clouds"].items())))
            again, again_time = module(work, {"clouds": clouds, "name": f"bench-three-{tag}", "src": str(src)})
            sent = sum(c["bytes_sent"] for c in again["clouds"].values())
            print(f"re-run   (3 clouds, unchanged):  {again_time:6.1f} s  sent {sent} bytes  changed={again['changed']}")
            for name in (f"bench-one-{tag}", f"bench-three-{tag}"):
                module(work, {"clouds": clouds, "name": name, "state": "absent"})
        finally:
            run(["virsh", "-c", guest.URI, "pool-destroy", pool], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
