"""The testbed's own integration test: real systemd hosts under podman and a real QEMU guest.

Everything later in the collection (molecule scenarios, integration targets, make demo)
stands on these behaviours, so they are checked against the real thing here.
"""

from __future__ import annotations

import json
import socket
import stat
import uuid
from pathlib import Path

import pytest

from hepinfra_testbed import guest, podman
from hepinfra_testbed import common
from hepinfra_testbed.common import LABEL, TestbedError, run

RUN_ID = uuid.uuid4().hex[:6]


@pytest.fixture(scope="module")
def network():
    name = f"hepinfra-tb-pytest-{RUN_ID}"
    podman.network_up(name)
    yield name
    podman.podman("network", "rm", "-f", name, check=False)


@pytest.fixture(scope="module")
def two_hosts(network):
    names = [f"tb-web-{RUN_ID}", f"tb-client-{RUN_ID}"]
    try:
        for name in names:
            podman.host_up(name, image="trixie", network=network)
        yield names
    finally:
        for name in names:
            podman.host_down(name)


def test_hosts_run_systemd_and_resolve_each_other(two_hosts):
    web, client = two_hosts
    assert podman.exec_in(web, "systemctl", "is-system-running").stdout.strip() == "running"
    assert web in podman.exec_in(client, "getent", "hosts", web).stdout
    assert client in podman.exec_in(web, "getent", "hosts", client).stdout
    ids = {podman.exec_in(name, "cat", "/etc/machine-id").stdout.strip() for name in two_hosts}
    assert len(ids) == 2 and "" not in ids, "every host needs its own machine-id"
    release = podman.exec_in(web, "cat", "/etc/os-release").stdout
    assert 'VERSION_CODENAME=trixie' in release


def test_a_debian_package_serves_across_the_network(two_hosts):
    web, client = two_hosts
    podman.exec_in(web, "apt-get", "update", "-q")
    podman.exec_in(web, "env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y", "-q",
                   "--no-install-recommends", "nginx-light")
    assert podman.exec_in(web, "systemctl", "is-active", "nginx").stdout.strip() == "active"
    podman.exec_in(web, "sh", "-c", f"echo served-by-{web} > /var/www/html/probe.txt")
    answer = podman.exec_in(client, "curl", "-sf", "--max-time", "10", f"http://{web}/probe.txt")
    assert answer.stdout.strip() == f"served-by-{web}"


def test_teardown_removes_only_what_the_testbed_created(network):
    ours = f"tb-ours-{RUN_ID}"
    foreign = f"tb-foreign-{RUN_ID}"
    podman.host_up(ours, network=network)
    podman.podman("run", "-d", "--name", foreign, "localhost/hepinfra-trixie", "sleep", "600")
    try:
        with pytest.raises(TestbedError, match="not created by the testbed"):
            podman.host_down(foreign)
        with pytest.raises(TestbedError, match="not created by the testbed"):
            podman.host_up(foreign, network=network)
        removed = podman.teardown()
        assert f"container {ours}" in removed
        assert f"container {foreign}" not in removed
        names = podman.podman("ps", "-a", "--format", "{{.Names}}").stdout.split()
        assert ours not in names and foreign in names
        assert network not in podman.podman("network", "ls", "--format", "{{.Name}}").stdout.split()
    finally:
        podman.podman("rm", "-f", "-t", "0", foreign, check=False)
        podman.host_down(ours)


def test_service_ports_are_kept_out_of_the_ephemeral_range():
    """Outgoing connections must never take a port a testbed service is about to listen on."""
    reserved = Path("/proc/sys/net/ipv4/ip_local_reserved_ports")
    low, high = (int(part) for part in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    first, last = (int(part) for part in common.SERVICE_PORTS.split("-"))
    assert low <= first and last <= high  # the reason for the reservation: inside the ephemeral range
    before = reserved.read_text().strip()
    try:
        common.reserve_service_ports()
        assert common.SERVICE_PORTS in reserved.read_text().strip().split(",")
        common.reserve_service_ports()  # idempotent
        assert reserved.read_text().strip().split(",").count(common.SERVICE_PORTS) == 1
        # the kernel keeps them from clients: 2,000 outgoing binds to port 0 never get one
        taken = []
        for _attempt in range(2000):
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                taken.append(sock.getsockname()[1])
        assert not [port for port in taken if first <= port <= last]
    finally:
        if common.SERVICE_PORTS not in before.split(","):
            common.release_service_ports()


def test_containers_conf_fits_this_machine():
    text = podman.containers_conf().read_text()
    assert 'runtime = "runc"' in text
    info = json.loads(podman.podman("info", "--format", "json").stdout)
    assert info["host"]["ociRuntime"]["name"] == "runc"


# -- libvirt + QEMU guests -------------------------------------------------------------------

GUEST = f"pytest-{RUN_ID}"
USER_DATA = f"""#cloud-config
write_files:
  - path: /etc/hepinfra-probe
    content: "seeded-{RUN_ID}\\n"
"""


@pytest.fixture(scope="module")
def libvirt_daemon():
    """libvirtd for the guest tests; stopped at the end if the testbed started it."""
    was_running = guest._libvirt_answers()  # pylint: disable=protected-access
    guest.daemon_up()
    yield
    if not was_running:
        stopped = guest.daemon_down()
        assert "libvirtd" in stopped
        assert not guest._libvirt_answers()  # pylint: disable=protected-access
        leftovers = run(["iptables", "-w", "-S"]).stdout
        assert "LIBVIRT_" not in leftovers


@pytest.fixture(scope="module")
def booted_guest(libvirt_daemon):  # pylint: disable=redefined-outer-name,unused-argument
    try:
        guest.guest_up(GUEST, user_data=USER_DATA, memory_mib=768)
        guest.wait_agent(GUEST, timeout=600)
        yield GUEST
    finally:
        guest.guest_down(GUEST)


def test_guest_boots_and_answers_through_its_agent(booted_guest):
    assert guest.agent(booted_guest, "guest-get-host-name") == {"host-name": booted_guest}
    code, out, _err = guest.guest_exec(booted_guest, ["/usr/bin/cat", "/etc/os-release"])
    assert code == 0 and "VERSION_CODENAME=trixie" in out


def test_guest_applies_its_cloud_init_seed(booted_guest):
    code, out, err = guest.guest_exec(booted_guest, ["/usr/bin/cloud-init", "status", "--wait"], timeout=600)
    assert code == 0, f"cloud-init ended with {code}: {out} {err}"
    code, out, _err = guest.guest_exec(booted_guest, ["/usr/bin/cat", "/etc/hepinfra-probe"])
    assert code == 0 and out.strip() == f"seeded-{RUN_ID}"


def test_guest_writes_to_its_overlay_never_the_golden_image(booted_guest):
    files = guest.guest_image()
    assert stat.S_IMODE(files["disk"].stat().st_mode) == 0o444
    code, _out, _err = guest.guest_exec(booted_guest, ["/usr/bin/sh", "-c", "head -c 8M /dev/urandom > /var/tmp/blob && sync"])
    assert code == 0
    info = json.loads(run(["qemu-img", "info", "-U", "--output=json", "--backing-chain",
                           guest.state_dir() / "guests" / booted_guest / "overlay.qcow2"]).stdout)
    assert info[0]["backing-filename"] == str(files["disk"])
    assert info[0]["actual-size"] > 8 << 20


def test_kvm_device_lets_libvirt_keep_its_capabilities(libvirt_daemon):  # pylint: disable=redefined-outer-name,unused-argument
    """Without udev, /dev/kvm must still get group kvm 0660, or libvirt probes QEMU again on every domain start."""
    import grp  # pylint: disable=import-outside-toplevel

    kvm = Path("/dev/kvm")
    if not kvm.exists():
        # libvirt never probes KVM here; the test bed must not invent a device either.
        guest._kvm_device_like_udev()  # pylint: disable=protected-access
        assert not kvm.exists()
        return
    assert kvm.stat().st_gid == grp.getgrnam("kvm").gr_gid
    assert stat.S_IMODE(kvm.stat().st_mode) & 0o060 == 0o060


def test_guest_teardown_refuses_foreign_domains(libvirt_daemon):  # pylint: disable=redefined-outer-name,unused-argument
    import libvirt  # pylint: disable=import-outside-toplevel

    conn = guest._connect()  # pylint: disable=protected-access
    name = guest.domain_name(f"foreign-{RUN_ID}")
    dom = conn.defineXML(
        f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory>"
        "<os><type arch='x86_64'>hvm</type></os></domain>"
    )
    try:
        with pytest.raises(TestbedError, match="not created by the testbed"):
            guest.guest_down(f"foreign-{RUN_ID}")
        assert f"foreign-{RUN_ID}" not in guest.owned_guests()
        assert conn.lookupByName(name).name() == name
    finally:
        dom.undefine()
        conn.close()
    with pytest.raises(libvirt.libvirtError):
        guest._connect().lookupByName(name)  # pylint: disable=protected-access


def test_label_is_on_everything_the_testbed_starts(network):
    name = f"tb-label-{RUN_ID}"
    podman.host_up(name, network=network)
    try:
        labels = json.loads(podman.podman("container", "inspect", name).stdout)[0]["Config"]["Labels"]
        assert labels.get(LABEL) == "host"
    finally:
        podman.host_down(name)
