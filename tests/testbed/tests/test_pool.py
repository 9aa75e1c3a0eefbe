"""The HTCondor pool worker guests join (hepinfra_testbed.pool), against the real thing.

The pool (central manager + submit, deployed by the htcondor role) comes up, answers
condor_status, listens only on the bridge of its libvirt network, mints tokens as asked,
takes jobs from an unprivileged user and goes away without a trace. A real worker guest
joining it is tested with the worker module (tests/integration/workers/test_worker_guest.py).
"""

from __future__ import annotations

import base64
import json
import re
import time

import pytest
import yaml

from hepinfra_testbed import guest, podman, pool
from hepinfra_testbed.common import run, state_dir

WORKER = "pool-worker"


@pytest.fixture(scope="module")
def htcondor_pool():
    try:
        yield pool.pool_up()
    finally:
        pool.pool_down()


def jwt_part(token: str, index: int) -> dict:
    part = token.split(".")[index]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def test_pool_answers_condor_status(htcondor_pool):
    info = htcondor_pool
    assert info.central_manager == pool.BRIDGE_ADDRESS
    collectors = info.status("-collector")
    assert len(collectors) == 1
    assert f"<{pool.BRIDGE_ADDRESS}:9618?" in collectors[0]["MyAddress"]
    schedds = info.status("-schedd")
    assert [ad["Name"] for ad in schedds] == [pool.HOST]
    assert info.status() == []  # no execute node yet: no slots


def test_pool_listens_only_on_the_bridge_of_its_network(htcondor_pool):
    info = htcondor_pool
    assert info.network in run(["virsh", "-c", guest.URI, "net-list", "--name"]).stdout.split()
    # The host shares the machine's network: every socket its processes listen on must be on the bridge.
    pids = set(podman.podman("top", info.container, "hpid").stdout.split()[1:])
    sockets = [line for line in run(["ss", "-H", "-ltunp"]).stdout.splitlines()
               if pids & set(re.findall(r"pid=(\d+)", line))]
    assert any(f"{pool.BRIDGE_ADDRESS}:9618 " in line and "condor_shared_p" in line for line in sockets), sockets
    for line in sockets:
        local = line.split()[4]
        assert local.rsplit(":", 1)[0] == pool.BRIDGE_ADDRESS, f"listens beyond the bridge: {line}"
    assert info.run(["systemctl", "is-enabled", "ssh.service"], check=False).stdout.strip() == "masked"


def test_execute_config_comes_from_the_role_and_points_at_the_pool(htcondor_pool):
    info = htcondor_pool
    assert re.search(rf"^CONDOR_HOST = {re.escape(pool.BRIDGE_ADDRESS)}$", info.execute_config, re.M)
    assert f"TRUST_DOMAIN = {pool.TRUST_DOMAIN}\n" in info.execute_config
    assert "use ROLE : Execute\n" in info.execute_config
    assert "use ROLE : CentralManager" not in info.execute_config
    assert "NETWORK_INTERFACE" not in info.execute_config  # the pool's own binding stays on the pool
    config = info.render_execute_config({"HepinfraGroup": "g1"})
    assert 'HepinfraGroup = "g1"\n' in config and "STARTD_ATTRS = $(STARTD_ATTRS) HepinfraGroup\n" in config
    # HTCondor itself reads the rendered file as a worker would.
    probe = info.run(["sh", "-c", "cat > /tmp/worker.conf && CONDOR_CONFIG=/tmp/worker.conf "
                      "condor_config_val CONDOR_HOST HepinfraGroup STARTD_ATTRS"], input_text=config)
    assert probe.stdout.split("\n")[:2] == [pool.BRIDGE_ADDRESS, '"g1"']
    assert "HepinfraGroup" in probe.stdout.split("\n")[2]


def test_mint_token_carries_identity_authorizations_and_lifetime(htcondor_pool):
    info = htcondor_pool
    before = int(time.time())
    token = info.mint_token("wn-test@hepinfra-tb-pool", ["ADVERTISE_STARTD", "READ"], 3600)
    header, payload = jwt_part(token, 0), jwt_part(token, 1)
    assert header["kid"] == "POOL"
    assert payload["sub"] == "wn-test@hepinfra-tb-pool"
    assert payload["iss"] == info.trust_domain
    assert sorted(payload["scope"].split()) == ["condor:/ADVERTISE_STARTD", "condor:/READ"]
    assert payload["exp"] - payload["iat"] == 3600
    assert before - 5 <= payload["iat"] <= int(time.time()) + 5

    forever = jwt_part(info.mint_token("condor@hepinfra-tb-pool", ["ADVERTISE_MASTER"], 0), 1)
    assert "exp" not in forever and forever["scope"] == "condor:/ADVERTISE_MASTER"
    worker = jwt_part(info.worker_token(), 1)
    assert worker["sub"] == f"condor@{info.trust_domain}"
    assert sorted(worker["scope"].split()) == ["condor:/ADVERTISE_MASTER", "condor:/ADVERTISE_STARTD", "condor:/READ"]


def test_worker_user_data_is_cloud_config_with_the_files_byte_exact(htcondor_pool):
    config = htcondor_pool.render_execute_config({"HepinfraGroup": "g1"})
    user_data = pool.worker_user_data(config, "aaa.bbb.ccc")
    assert user_data.startswith("#cloud-config\n")
    data = yaml.safe_load(user_data)
    files = {item["path"]: item for item in data["write_files"]}
    assert files["/etc/condor/config.d/50-hepinfra.conf"]["content"] == config
    assert files["/etc/condor/tokens.d/worker"] == {"path": "/etc/condor/tokens.d/worker", "owner": "root:root",
                                                    "permissions": "0600", "content": "aaa.bbb.ccc\n"}
    assert data["runcmd"] == [["systemctl", "restart", "condor"]]


def test_unprivileged_user_submits_to_the_schedd(htcondor_pool):
    info = htcondor_pool
    cluster = info.submit("executable = /bin/true\nrequest_cpus = 1\nrequest_memory = 16M\nqueue\n")
    try:
        owners = info.run(["condor_q", "-allusers", str(cluster), "-af", "ClusterId", "Owner"]).stdout.split()
        assert owners == [str(cluster), info.submit_user]
    finally:
        info.run(["condor_rm", str(cluster)], check=False)


def test_pool_down_removes_host_network_and_state(htcondor_pool):
    info = htcondor_pool
    assert pool.pool_down() is True
    names = run(["podman", "ps", "-a", "--format", "{{.Names}}"],
                env={"CONTAINERS_CONF": str(podman.containers_conf())}).stdout.split()
    assert info.container not in names
    if pool._libvirt_reachable():  # pylint: disable=protected-access
        assert info.network not in run(["virsh", "-c", guest.URI, "net-list", "--all", "--name"]).stdout.split()
    assert info.bridge not in run(["ip", "-br", "link"]).stdout
    assert not (state_dir() / "pool.json").exists()
    assert pool.pool_down() is False  # nothing left to remove
