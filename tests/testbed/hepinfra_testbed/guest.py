"""libvirt + QEMU guests: a cached bootable Debian 13 image, per-guest overlays, a private libvirtd.

There is no usable hardware acceleration on these machines, so guests run under TCG
(domain type ``qemu``). The golden image is read-only (0444) and every guest writes to its
own qcow2 overlay; the kernel and initrd are booted directly.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path
from xml.etree import ElementTree
from xml.sax.saxutils import escape

from .common import (LIBVIRT_NS, PREFIX, TestbedError, cache_dir, log, recipe_hash, remove_chains, run, state_dir,
                     wait_for)
from .images import extract_rootfs, host_key, HOSTS, require_tools

URI = "qemu:///system"

GUEST_PACKAGES = [
    "linux-image-amd64",
    "initramfs-tools",
    "e2fsprogs",
    "qemu-guest-agent",
    "cloud-init",
    "systemd-resolved",
    "netbase",
]

NETWORKD = """\
[Match]
Name=en* eth*

[Network]
DHCP=yes
"""

CLOUD_CFG = """\
# The testbed's guests are seeded from a NoCloud disk; never probe other clouds.
datasource_list: [NoCloud, None]
# The image carries no SSH server: do not try to generate host keys for one.
ssh_genkeytypes: []
ssh_deletekeys: false
"""

# A guest without a network interface would otherwise hold boot for two minutes.
WAIT_ONLINE = """\
[Service]
ExecStart=
ExecStart=/usr/lib/systemd/systemd-networkd-wait-online --any --timeout=20
"""


def _prepare_guest_root(root: Path, packages: list[str]) -> None:
    mounts = []
    try:
        for source, target, opts in (
            ("proc", "proc", ["-t", "proc"]),
            ("sysfs", "sys", ["-t", "sysfs"]),
            ("/dev", "dev", ["--bind"]),
        ):
            run(["mount", *opts, source, root / target])
            mounts.append(root / target)
        shutil.copy("/etc/resolv.conf", root / "etc/resolv.conf")
        env = {"DEBIAN_FRONTEND": "noninteractive"}
        run(["chroot", root, "apt-get", "update", "-q"], env=env, timeout=900)
        run(
            ["chroot", root, "apt-get", "install", "-y", "-q", "--no-install-recommends", *packages],
            env=env,
            timeout=1800,
        )
        run(["chroot", root, "systemctl", "enable", "systemd-networkd", "systemd-resolved"])
        run(["chroot", root, "apt-get", "clean"])
    finally:
        for mount in reversed(mounts):
            run(["umount", "-l", mount], check=False)
    (root / "etc/fstab").write_text("/dev/vda / ext4 defaults 0 1\n")
    (root / "etc/systemd/network/20-wired.network").write_text(NETWORKD)
    (root / "etc/cloud/cloud.cfg.d/90-hepinfra-testbed.cfg").write_text(CLOUD_CFG)
    dropin = root / "etc/systemd/system/systemd-networkd-wait-online.service.d"
    dropin.mkdir(parents=True, exist_ok=True)
    (dropin / "10-hepinfra-testbed.conf").write_text(WAIT_ONLINE)
    (root / "etc/hostname").unlink(missing_ok=True)
    (root / "etc/machine-id").write_text("")
    (root / "etc/resolv.conf").unlink(missing_ok=True)
    for entry in (root / "var/lib/apt/lists").iterdir():
        if entry.is_file():
            entry.unlink()
    os.utime(root / "var/lib/apt/lists", (0, 0))


def guest_image(extra_packages: tuple[str, ...] = ()) -> dict[str, Path]:
    """Build (or reuse) the golden guest image: {'disk', 'kernel', 'initrd'} paths."""
    require_tools("qemu-img", "mkfs.ext4", "cloud-localds")
    packages = GUEST_PACKAGES + sorted(extra_packages)
    key = recipe_hash(host_key(HOSTS["trixie"]), packages, NETWORKD, CLOUD_CFG, WAIT_ONLINE, _prepare_guest_root)
    target = cache_dir() / "guests" / f"trixie-{key}"
    files = {"disk": target / "disk.qcow2", "kernel": target / "vmlinuz", "initrd": target / "initrd.img"}
    if all(path.exists() for path in files.values()):
        return files
    log("building the guest image (kernel, cloud-init, guest agent); takes about 2 minutes")
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob("trixie-*"):
        _remove_tree(stale)
    with tempfile.TemporaryDirectory(prefix="hepinfra-tb-guest-", dir=cache_dir()) as tmp:
        root = Path(tmp) / "root"
        extract_rootfs("trixie", root)
        _prepare_guest_root(root, packages)
        work = Path(tmp) / "out"
        work.mkdir()
        kernels = sorted((root / "boot").glob("vmlinuz-*"))
        initrds = sorted((root / "boot").glob("initrd.img-*"))
        if not kernels or not initrds:
            raise TestbedError("the guest root has no kernel or initrd after installing linux-image-amd64")
        shutil.copy(kernels[-1], work / "vmlinuz")
        shutil.copy(initrds[-1], work / "initrd.img")
        raw = Path(tmp) / "disk.raw"
        run(["truncate", "-s", "4G", raw])
        run(["mkfs.ext4", "-q", "-F", "-L", "root", "-d", root, raw], timeout=900)
        run(["qemu-img", "convert", "-O", "qcow2", raw, work / "disk.qcow2"], timeout=900)
        (work / "disk.qcow2").chmod(0o444)
        if target.exists():
            shutil.rmtree(target)
        work.rename(target)
    log(f"guest image cached in {target.name} ({files['disk'].stat().st_size >> 20} MiB)")
    return files


def _remove_tree(path: Path) -> None:
    for item in path.rglob("*"):
        if item.is_file():
            item.chmod(0o644)
    shutil.rmtree(path, ignore_errors=True)


# -- the libvirt daemon ---------------------------------------------------------------------

def _daemon_state() -> Path:
    return state_dir() / "libvirtd.json"


def _libvirt_answers() -> bool:
    return run(["virsh", "-c", URI, "version"], check=False, timeout=20).returncode == 0


def daemon_up() -> None:
    """Use a running libvirtd, or start one (recorded so daemon_down stops only what we started)."""
    require_tools("libvirtd", "virtlogd", "virsh")
    # Also for a running libvirtd: /dev/kvm may have lost its group since (see below).
    _kvm_device_like_udev()
    if _libvirt_answers():
        return
    log("starting virtlogd and libvirtd")
    started: dict[str, object] = {}
    for daemon in ("virtlogd", "libvirtd"):
        pidfile = Path(f"/run/{daemon}.pid")
        if run(["pgrep", "-x", daemon], check=False).returncode != 0:
            run([daemon, "-d"])
            pid = wait_for(lambda p=pidfile: p.exists() and p.read_text().strip(), timeout=30, what=f"{daemon} pid")
            started[daemon] = int(pid)
    wait_for(_libvirt_answers, timeout=60, what="libvirtd to answer")
    started["networks"] = _active_networks()
    _daemon_state().write_text(json.dumps(started))


def _kvm_device_like_udev() -> None:
    """Give /dev/kvm the owner and mode Debian's udev rule gives it (group kvm, 0660) when no udev ran.

    On these machines /dev/kvm comes as root 0600 or with a group that does not exist here.
    libvirt then finds that the QEMU user cannot open it, decides on every define or start that its
    cached QEMU capabilities (probed with KVM) are stale and probes QEMU again: 48 s to over 2 minutes
    per domain. With the group and mode udev would set, the cache stays valid and a define takes
    milliseconds. Guests still run under TCG (type 'qemu'): this KVM cannot boot them (see TESTBED.md).
    """
    import grp  # pylint: disable=import-outside-toplevel
    import stat  # pylint: disable=import-outside-toplevel

    kvm = Path("/dev/kvm")
    if not kvm.exists():
        return
    try:
        group = grp.getgrnam("kvm")
    except KeyError:
        return
    info = kvm.stat()
    if info.st_gid == group.gr_gid and stat.S_IMODE(info.st_mode) & 0o060 == 0o060:
        return  # as udev (or an admin) set it up
    os.chown(kvm, 0, group.gr_gid)
    kvm.chmod(0o660)
    log("/dev/kvm was not group kvm 0660: set as udev would")


def _active_networks() -> list[str]:
    out = run(["virsh", "-c", URI, "net-list", "--name"], check=False).stdout
    return [line.strip() for line in out.splitlines() if line.strip()]


def daemon_down() -> list[str]:
    """Stop the daemons the testbed started, and the networks and iptables chains they left."""
    path = _daemon_state()
    if not path.exists():
        return []
    started = json.loads(path.read_text())
    stopped: list[str] = []
    if _libvirt_answers():
        active = run(["virsh", "-c", URI, "list", "--name"], check=False).stdout.split()
        if active:
            log(f"leaving libvirtd running: domains the testbed did not create are active ({', '.join(active)})")
            return stopped
    for net in started.get("networks", []):
        run(["virsh", "-c", URI, "net-destroy", net], check=False)
    for daemon in ("libvirtd", "virtlogd"):
        pid = started.get(daemon)
        if not pid or not _pid_is(pid, daemon):
            continue
        os.kill(pid, signal.SIGTERM)
        try:
            wait_for(lambda p=pid: not Path(f"/proc/{p}").exists(), timeout=20, what=f"{daemon} to exit")
        except TestbedError:
            os.kill(pid, signal.SIGKILL)
        stopped.append(daemon)
    stopped += _remove_empty_libvirt_chains()
    path.unlink()
    return stopped


def _pid_is(pid: int, name: str) -> bool:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() == name
    except OSError:
        return False


def _remove_empty_libvirt_chains() -> list[str]:
    """libvirt leaves empty LIBVIRT_* chains behind on stop; remove those (and only those)."""
    return remove_chains("LIBVIRT_", only_empty=True)


# -- guests ---------------------------------------------------------------------------------

def domain_name(name: str) -> str:
    return f"{PREFIX}-{name}"


def _domain_xml(name: str, files: dict[str, Path], overlay: Path, seed: Path, console: Path,
                memory_mib: int, vcpus: int, network: str | None) -> str:
    interface = (
        f"<interface type='network'><source network='{escape(network)}'/><model type='virtio'/></interface>"
        if network else ""
    )
    return f"""<domain type='qemu'>
  <name>{escape(domain_name(name))}</name>
  <metadata><tb:testbed xmlns:tb='{LIBVIRT_NS}'>{escape(name)}</tb:testbed></metadata>
  <memory unit='MiB'>{memory_mib}</memory>
  <vcpu>{vcpus}</vcpu>
  <features><acpi/><apic/></features>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{escape(str(files['kernel']))}</kernel>
    <initrd>{escape(str(files['initrd']))}</initrd>
    <cmdline>root=/dev/vda rw console=ttyS0 quiet</cmdline>
  </os>
  <on_poweroff>destroy</on_poweroff>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{escape(str(overlay))}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='{escape(str(seed))}'/>
      <target dev='vdb' bus='virtio'/>
      <readonly/>
    </disk>
    {interface}
    <serial type='file'><source path='{escape(str(console))}'/><target port='0'/></serial>
    <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
    <rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>
  </devices>
  <seclabel type='static' model='dac' relabel='no'><label>+0:+0</label></seclabel>
</domain>
"""


def _connect():
    try:
        import libvirt  # pylint: disable=import-outside-toplevel
    except ImportError as exc:
        raise TestbedError("libvirt-python is missing: run 'make bootstrap'") from exc
    # libvirt prints every error to stderr by default; the testbed reports them itself.
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    return libvirt.open(URI)


def _owned_domain(conn, name: str):
    import libvirt  # pylint: disable=import-outside-toplevel

    try:
        dom = conn.lookupByName(domain_name(name))
    except libvirt.libvirtError:
        return None
    try:
        dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, LIBVIRT_NS)
    except libvirt.libvirtError:
        raise TestbedError(f"refusing to touch domain {domain_name(name)}: it was not created by the testbed") from None
    return dom


def guest_up(name: str, *, user_data: str | bytes | None = None, memory_mib: int = 1024,
             vcpus: int = 2, network: str | None = None, extra_packages: tuple[str, ...] = ()) -> str:
    """Define and start a guest on an overlay of the golden image; return the domain name."""
    files = guest_image(extra_packages)
    daemon_up()
    conn = _connect()
    try:
        if _owned_domain(conn, name) is not None:
            guest_down(name)
        workdir = state_dir() / "guests" / name
        if workdir.exists():
            shutil.rmtree(workdir)
        workdir.mkdir(parents=True)
        overlay = workdir / "overlay.qcow2"
        run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", files["disk"], overlay])
        (workdir / "meta-data").write_text(f"instance-id: {name}-{int(time.time())}\nlocal-hostname: {name}\n")
        # bytes: user-data as a cloud would pass it (gzip, MIME multipart), written unchanged
        if isinstance(user_data, bytes):
            (workdir / "user-data").write_bytes(user_data)
        else:
            (workdir / "user-data").write_text(user_data or "#cloud-config\n{}\n")
        seed = workdir / "seed.img"
        run(["cloud-localds", seed, workdir / "user-data", workdir / "meta-data"])
        console = workdir / "console.log"
        xml = _domain_xml(name, files, overlay, seed, console, memory_mib, vcpus, network)
        log(f"starting guest {domain_name(name)} (TCG, boots in about a minute)")
        dom = conn.defineXML(xml)
        dom.create()
        return dom.name()
    finally:
        conn.close()


def agent(name: str, command: str, arguments: dict | None = None, timeout: int = 10):
    """Send one guest-agent command and return its decoded 'return' value."""
    import libvirt_qemu  # pylint: disable=import-outside-toplevel

    conn = _connect()
    try:
        dom = _owned_domain(conn, name)
        if dom is None:
            raise TestbedError(f"no guest {domain_name(name)}")
        payload = {"execute": command}
        if arguments:
            payload["arguments"] = arguments
        return json.loads(libvirt_qemu.qemuAgentCommand(dom, json.dumps(payload), timeout, 0))["return"]
    finally:
        conn.close()


def wait_agent(name: str, timeout: float = 300) -> None:
    wait_for(lambda: agent(name, "guest-ping") == {}, timeout=timeout, interval=3,
             what=f"the guest agent of {domain_name(name)}")


def guest_exec(name: str, argv: list[str], timeout: float = 300) -> tuple[int, str, str]:
    """Run a command in the guest through the agent; return (exit code, stdout, stderr)."""
    started = agent(name, "guest-exec", {"path": argv[0], "arg": argv[1:], "capture-output": True})
    pid = started["pid"]

    def finished():
        status = agent(name, "guest-exec-status", {"pid": pid})
        return status if status.get("exited") else None

    status = wait_for(finished, timeout=timeout, interval=1, what=f"{' '.join(argv)} in {domain_name(name)}")

    def decode(key: str) -> str:
        return base64.b64decode(status.get(key, "")).decode(errors="replace")

    return status.get("exitcode", -1), decode("out-data"), decode("err-data")


def guest_down(name: str) -> bool:
    """Destroy and undefine one guest the testbed created; remove its overlay and seed."""
    import libvirt  # pylint: disable=import-outside-toplevel

    if not _libvirt_answers():
        return False
    conn = _connect()
    try:
        dom = _owned_domain(conn, name)
        if dom is None:
            return False
        if dom.isActive():
            dom.destroy()
        dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM if hasattr(libvirt, "VIR_DOMAIN_UNDEFINE_NVRAM") else 0)
    finally:
        conn.close()
    shutil.rmtree(state_dir() / "guests" / name, ignore_errors=True)
    return True


def owned_guests() -> list[str]:
    """Testbed names of the domains carrying the testbed's metadata."""
    import libvirt  # pylint: disable=import-outside-toplevel

    if not _libvirt_answers():
        return []
    conn = _connect()
    names = []
    try:
        for dom in conn.listAllDomains():
            try:
                names.append(ElementTree.fromstring(dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, LIBVIRT_NS)).text or "")
            except libvirt.libvirtError:
                continue
    finally:
        conn.close()
    return names


def teardown() -> list[str]:
    removed = [f"guest {domain_name(n)}" for n in owned_guests() if guest_down(n)]
    removed += [f"daemon {d}" for d in daemon_down()]
    return removed
