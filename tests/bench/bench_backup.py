"""make bench-backup: live backup of a running domain with GiBs of real data into restic on S3.

The disk is an ext4 file system holding a copy of real files (/usr/lib by default, several
GiB of binaries, libraries and data), as qcow2, attached to a running domain. Printed:

* dd reading the image (the rate the disk can be read at), page cache dropped first;
* the first (full) backup with hepinfra.cloud.libvirt_backup into restic on a local S3
  server (SeaweedFS), page cache dropped first: its rate and its share of dd's rate;
* an incremental backup after 1% of the disk was rewritten with random data in 64 KiB
  blocks spread over the disk: its time as a share of the full backup's.

Figures only; nothing is asserted. BENCH_BACKUP_SOURCE picks the directory copied into the
disk, BENCH_BACKUP_DISK_GIB the disk size.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "testbed"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import run_module  # noqa: E402
from hepinfra_testbed import guest, storage  # noqa: E402
from hepinfra_testbed.common import LIBVIRT_NS, PREFIX, run  # noqa: E402

SOURCE = os.environ.get("BENCH_BACKUP_SOURCE", "/usr/lib")
DISK_GIB = int(os.environ.get("BENCH_BACKUP_DISK_GIB", "6"))
NAME = f"{PREFIX}-bench-backup"
PASSWORD = "bench-password"


def drop_caches() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def module(work: Path, args: dict) -> tuple[dict, float]:
    return run_module(work, "hepinfra.cloud.libvirt_backup", args)


def change_one_percent(image: Path, size: int) -> int:
    """Rewrite 1% of the disk with random data, 64 KiB blocks at random aligned offsets."""
    block = 64 << 10
    count = size // 100 // block
    rng = random.Random(42)
    offsets = sorted(rng.sample(range(size // block), count))
    data = image.parent / "random.bin"
    data.write_bytes(os.urandom(block))
    commands = []
    for offset in offsets:
        commands += ["-c", f"write -s {data} {offset * block} {block}"]
    for start in range(0, len(commands), 2000):
        run(["qemu-io", "-f", "qcow2", *commands[start:start + 2000], image])
    return count * block


def main() -> int:
    guest.daemon_up()
    s3 = storage.s3_up()
    restic = storage.restic_binary()
    work = Path(tempfile.mkdtemp(prefix="hepinfra-bench-backup-", dir="/var/tmp"))
    try:
        print(f"building a {DISK_GIB} GiB ext4 disk with a copy of {SOURCE} ...", flush=True)
        raw = work / "disk.raw"
        run(["truncate", "-s", f"{DISK_GIB}G", raw])
        run(["mkfs.ext4", "-q", "-F", "-d", SOURCE, raw], timeout=3600)
        image = work / "disk.qcow2"
        run(["qemu-img", "convert", "-O", "qcow2", raw, image], timeout=3600)
        raw.unlink()
        shutil.copy(image, work / "base.qcow2")
        used = int(json.loads(run(["qemu-img", "info", "--output=json", image]).stdout)["actual-size"])
        size = DISK_GIB << 30
        xml = f"""<domain type='qemu'><name>{NAME}</name>
          <metadata><tb:testbed xmlns:tb='{LIBVIRT_NS}'>bench-backup</tb:testbed></metadata>
          <memory unit='MiB'>64</memory><vcpu>1</vcpu><os><type arch='x86_64' machine='pc'>hvm</type></os>
          <devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{image}'/>
          <target dev='vda' bus='virtio'/></disk></devices>
          <seclabel type='static' model='dac' relabel='no'><label>+0:+0</label></seclabel></domain>"""
        (work / "domain.xml").write_text(xml)
        run(["virsh", "-c", guest.URI, "define", work / "domain.xml"])
        run(["virsh", "-c", guest.URI, "start", NAME])

        cold = drop_caches()
        started = time.monotonic()
        run(["dd", f"if={image}", "of=/dev/null", "bs=4M", "status=none"], timeout=3600)
        dd_seconds = time.monotonic() - started
        dd_rate = used / dd_seconds

        args = {"repository": s3.repository("hepinfra-bench", "backup"), "repository_password": PASSWORD,
                "s3_access_key_id": s3.access_key, "s3_secret_access_key": s3.secret_key,
                "restic_path": str(restic), "domains": [NAME]}
        drop_caches()
        full, full_wall = module(work, args)
        full_disk = full["domains"][0]["disks"][0]

        # Where the time goes: the read pipeline alone (nbdcopy -> hash -> nowhere), restic alone
        # on the same stream, and the module with restic's compression off.
        drop_caches()
        started = time.monotonic()
        pipeline = subprocess.run(f"nbdcopy -- [ qemu-nbd --read-only --format qcow2 {work / 'base.qcow2'} ] - | sha256sum",
                                  shell=True, capture_output=True, text=True, check=False)
        pipeline_seconds = time.monotonic() - started
        env = dict(os.environ, RESTIC_REPOSITORY=s3.repository("hepinfra-bench", "alone"), RESTIC_PASSWORD=PASSWORD,
                   AWS_ACCESS_KEY_ID=s3.access_key, AWS_SECRET_ACCESS_KEY=s3.secret_key)
        subprocess.run([str(restic), "init"], env=env, capture_output=True, check=True)
        drop_caches()
        started = time.monotonic()
        subprocess.run(f"nbdcopy -- [ qemu-nbd --read-only --format qcow2 {work / 'base.qcow2'} ] - |"
                       f" {restic} backup --stdin --stdin-filename alone.raw -q", shell=True, env=env, check=True)
        restic_seconds = time.monotonic() - started
        drop_caches()
        uncompressed = module(work, dict(args, repository=s3.repository("hepinfra-bench", "uncompressed"),
                                         restic_env={"RESTIC_COMPRESSION": "off"}))
        uncompressed_disk = uncompressed[0]["domains"][0]["disks"][0]

        run(["virsh", "-c", guest.URI, "destroy", NAME])
        changed = change_one_percent(image, size)
        run(["virsh", "-c", guest.URI, "start", NAME])
        drop_caches()
        incremental, incremental_wall = module(work, args)
        incremental_disk = incremental["domains"][0]["disks"][0]

        mib = 1 << 20
        print()
        print(f"disk: {DISK_GIB} GiB virtual, {used / mib:.0f} MiB allocated (a copy of {SOURCE});"
              f" page cache dropped before each read: {'yes' if cold else 'no (not permitted here)'}")
        print(f"{'':34} {'seconds':>9} {'MiB/s':>9}  notes")
        print(f"{'dd of the qcow2 image':34} {dd_seconds:9.1f} {used / mib / dd_seconds:9.0f}  allocated bytes read")
        full_rate = used / full_disk["duration"]
        print(f"{'full backup (disk vda)':34} {full_disk['duration']:9.1f} {full_rate / mib:9.0f}  "
              f"{full_rate / dd_rate:.0%} of dd (target >= 70%); {full_disk['bytes_added'] / mib:.0f} MiB added;"
              f" stream {full_disk['bytes_read'] / mib:.0f} MiB")
        print(f"{'incremental after 1% rewritten':34} {incremental_disk['duration']:9.1f} {'':>9}  "
              f"{incremental_disk['duration'] / full_disk['duration']:.0%} of the full backup's time (target <= 10%);"
              f" {changed / mib:.0f} MiB rewritten, {incremental_disk['bytes_added'] / mib:.0f} MiB added")
        print(f"{'read pipeline alone (nbdcopy+hash)':34} {pipeline_seconds:9.1f} {used / mib / pipeline_seconds:9.0f}"
              f"  {'ok' if pipeline.returncode == 0 else 'FAILED'}")
        print(f"{'restic alone on the stream':34} {restic_seconds:9.1f} {used / mib / restic_seconds:9.0f}"
              f"  compression auto, same S3")
        print(f"{'full backup, compression off':34} {uncompressed_disk['duration']:9.1f}"
              f" {used / mib / uncompressed_disk['duration']:9.0f}  restic_env RESTIC_COMPRESSION=off")
        print(f"{'whole module runs (wall)':34} {full_wall:9.1f} / {incremental_wall:.1f}  full / incremental, incl. ansible-playbook")
        return 0
    finally:
        run(["virsh", "-c", guest.URI, "destroy", NAME], check=False)
        run(["virsh", "-c", guest.URI, "undefine", NAME], check=False)
        shutil.rmtree(work, ignore_errors=True)
        storage.s3_down()


if __name__ == "__main__":
    sys.exit(main())
