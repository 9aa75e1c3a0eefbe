"""The testbed's OpenStack compute tier: real Placement, Nova and Neutron, Nova with its fake driver.

The worker module's tests stand on these behaviours, checked here with openstacksdk (the
tests' 4.14) as those tests will use it: a user's server goes ACTIVE on the shared network
within seconds, a quota refuses the next one, force_error puts a server into ERROR, and
`down` leaves no process behind.
"""

from __future__ import annotations

import ipaddress
import time
import uuid

import openstack
import pytest
from hepinfra_testbed import openstack as testbed
from hepinfra_testbed.common import run

RUN_ID = uuid.uuid4().hex[:6]
ACTIVE_WITHIN = 30  # seconds; 1-3 s here


@pytest.fixture(scope="module")
def cloud():
    """The testbed's OpenStack with its compute tier, for this module."""
    info = testbed.up(compute=True)
    try:
        yield info
    finally:
        testbed.down()


def connect(auth: dict[str, str], region: str) -> openstack.connection.Connection:
    return openstack.connect(auth_type="password", auth=auth, region_name=region, load_yaml_config=False,
                             load_envvars=False)


@pytest.fixture(scope="module")
def alpha(cloud):  # pylint: disable=redefined-outer-name
    """openstacksdk as user alpha (project alpha) in the compute region."""
    conn = connect(cloud.auth("alpha"), cloud.compute["region"])
    yield conn
    conn.close()


@pytest.fixture(scope="module")
def image(alpha, tmp_path_factory):  # pylint: disable=redefined-outer-name
    """A tiny real qcow2 in alpha's Glance (Glance checks that the bytes are qcow2)."""
    path = tmp_path_factory.mktemp("image") / "tiny.qcow2"
    run(["qemu-img", "create", "-q", "-f", "qcow2", path, "64M"])
    return alpha.create_image(f"tb-tiny-{RUN_ID}", filename=str(path), disk_format="qcow2", container_format="bare",
                              wait=True)


def boot(conn: openstack.connection.Connection, name: str, image_id: str, flavor: str, network: str):
    return conn.compute.create_server(name=name, image_id=image_id, flavor_id=conn.compute.find_flavor(flavor).id,
                                      networks=[{"uuid": conn.network.find_network(network).id}])


def test_flavors_network_and_capacity_are_there(cloud, alpha):  # pylint: disable=redefined-outer-name
    info = cloud.compute
    for name, spec in info["flavors"].items():
        flavor = alpha.compute.find_flavor(name, ignore_missing=False)
        assert (flavor.vcpus, flavor.ram, flavor.disk, flavor.is_public) == (spec["vcpus"], spec["ram"], spec["disk"], True)
    network = alpha.network.find_network(info["network"], ignore_missing=False)
    assert network.is_shared
    subnet = alpha.network.find_subnet(info["subnet"], ignore_missing=False)
    assert subnet.cidr == info["cidr"] and subnet.ip_version == 4
    admin = connect(cloud.admin_auth(), info["region"])
    try:
        (provider,) = list(admin.placement.resource_providers(name=info["host"]))
        inventory = {entry.resource_class: entry for entry in admin.placement.resource_provider_inventories(provider)}
    finally:
        admin.close()

    def capacity(resource_class: str) -> float:
        entry = inventory[resource_class]
        return (entry.total - entry.reserved) * entry.allocation_ratio

    small = info["flavors"]["w1.small"]
    assert capacity("VCPU") >= 120 * small["vcpus"]
    assert capacity("MEMORY_MB") >= 120 * small["ram"]
    assert capacity("DISK_GB") >= 120 * small["disk"]
    assert info["default_quota"]["instances"] >= 120


def test_a_server_goes_active_then_quota_refuses_the_next(cloud, alpha, image):  # pylint: disable=redefined-outer-name
    info = cloud.compute
    started = time.monotonic()
    server = boot(alpha, f"tb-one-{RUN_ID}", image.id, "w1.small", info["network"])
    try:
        server = alpha.compute.wait_for_server(server, status="ACTIVE", failures=["ERROR"], interval=0.5,
                                               wait=ACTIVE_WITHIN)
        print(f"ACTIVE in {time.monotonic() - started:.1f} s")
        addresses = [entry["addr"] for entry in server.addresses[info["network"]]]
        assert addresses and all(ipaddress.ip_address(addr) in ipaddress.ip_network(info["cidr"]) for addr in addresses)

        # No room for one more (a reused set may hold servers of earlier tests).
        testbed.set_quota("alpha", instances=len(list(alpha.compute.servers())))
        try:
            refused = None
            try:
                second = boot(alpha, f"tb-two-{RUN_ID}", image.id, "w1.small", info["network"])
            except openstack.exceptions.HttpException as exc:
                refused = exc
            else:  # a Nova that accepts and fails later must at least end in ERROR
                second = alpha.compute.wait_for_server(second, status="ERROR", interval=0.5, wait=ACTIVE_WITHIN)
                alpha.compute.delete_server(second)
            assert refused is not None, "Nova accepted a server beyond the quota"
            assert refused.status_code == 403 and "Quota exceeded" in str(refused)
        finally:
            testbed.reset_quota("alpha")
        assert alpha.compute.get_limits().absolute.instances == info["default_quota"]["instances"]

        testbed.force_error(server.id)
        assert alpha.compute.get_server(server.id).status == "ERROR"
    finally:
        alpha.compute.delete_server(server, ignore_missing=True)
    alpha.compute.wait_for_delete(server, interval=0.5, wait=60)
    assert alpha.compute.find_server(f"tb-one-{RUN_ID}") is None


def test_down_leaves_no_process(cloud):  # pylint: disable=redefined-outer-name
    assert set(cloud.pids.values()) <= set(testbed.processes())
    assert testbed.down()
    assert testbed.processes() == []
    leftovers = [line for line in run(["ss", "-Hltn"]).stdout.splitlines()
                 if any(f"127.0.0.1:{port} " in line for port in (*testbed.GLANCE_PORTS.values(), testbed.KEYSTONE_PORT,
                                                                  testbed.NOVA_PORT, testbed.NEUTRON_PORT,
                                                                  testbed.PLACEMENT_PORT, testbed.POSTGRES_PORT,
                                                                  testbed.RABBIT_PORT, testbed.RABBIT_DIST_PORT,
                                                                  testbed.EPMD_PORT))]
    assert leftovers == []
