"""hepinfra.cloud.worker on a real OpenStack: Keystone, Glance, Placement, Nova (fake driver) and Neutron.

No guest boots under Nova's fake driver, so the pool's view is off here (the real pool is in
test_worker_guest.py); the API side is real: servers, metadata, quotas, errors, credentials.
"""

from __future__ import annotations

import datetime
import json
import time
import uuid
from pathlib import Path

import jinja2
import openstack
import pytest
import yaml
from hepinfra_testbed import openstack as testbed
from hepinfra_testbed import podman
from hepinfra_testbed.common import run

GROUP = "g1"


@pytest.fixture(scope="module")
def compute():
    info = testbed.up(compute=True)
    yield info
    testbed.down()


@pytest.fixture(scope="module")
def alpha(compute):  # pylint: disable=redefined-outer-name
    conn = openstack.connect(auth_type="password", auth=compute.auth("alpha"), region_name=compute.compute["region"],
                             load_yaml_config=False, load_envvars=False)
    yield conn
    conn.close()


@pytest.fixture
def os_cloud(compute, alpha, run_module, tmp_path):  # pylint: disable=redefined-outer-name
    """A cloud ``os`` (user alpha) with the image ``wimg`` in its Glance; servers of the test group and the
    quota are cleaned up after the test."""
    cloud = {"name": "os", "type": "openstack", "priority": 5,
             "openstack": {"auth": compute.auth("alpha"), "region_name": compute.compute["region"]},
             "defaults": {"flavor": "w1.small", "image": "wimg", "network": compute.compute["network"]}}
    image = tmp_path / "wimg.qcow2"
    run(["qemu-img", "create", "-q", "-f", "qcow2", image, "64M"])
    uploaded = run_module("hepinfra.cloud.image",
                          {"clouds": [cloud], "name": "wimg", "src": str(image), "checksum_cache": ""})
    assert uploaded.rc == 0 and not uploaded.failed, uploaded.output
    yield cloud
    testbed.reset_quota("alpha")
    left = list(alpha.compute.servers(name=f"^{GROUP}--"))
    for server in left:
        alpha.compute.delete_server(server, ignore_missing=True)
    wait_gone(alpha, [server.name for server in left])


def args(cloud, count, tmp_path, **extra):
    base = {"clouds": [cloud], "group": GROUP, "config": "c1", "placements": [{"cloud": "os", "count": count}],
            "condor": {"tokens": False, "collector": False}, "audit_log": str(tmp_path / "audit.jsonl"),
            "wait": "active", "wait_timeout": 120}
    base.update(extra)
    return base


def ok(outcome):
    if outcome.rc != 0 or outcome.failed:
        pytest.fail("%s\n%s" % (outcome.msg, outcome.output[-3000:]), pytrace=False)
    return outcome.result


def ours(alpha):  # pylint: disable=redefined-outer-name
    return {s.name: s for s in alpha.compute.servers(details=True, name=f"^{GROUP}--")}


def test_count_up_and_down_leaves_a_look_alike_alone(os_cloud, alpha, run_module, tmp_path):
    # pylint: disable=redefined-outer-name
    lookalike = alpha.compute.create_server(
        name=f"{GROUP}--os--{uuid.uuid4()}", flavor_id=alpha.compute.find_flavor("w1.small").id,
        image_id=alpha.image.find_image("wimg").id, networks=[{"uuid": alpha.network.find_network("private").id}])
    launch = run_module("hepinfra.cloud.worker", args(os_cloud, 4, tmp_path), verbosity=3)
    up = ok(launch)
    report = up["clouds"]["os"]
    # the cloud's password is in the task's arguments: never in its result or output, even with -vvv
    password = os_cloud["openstack"]["auth"]["password"]
    assert password not in launch.output and password not in json.dumps(up)
    assert password not in (tmp_path / "audit.jsonl").read_text()
    assert len(report["launched"]) == 4 and report["foreign"] == [lookalike.name]
    servers = ours(alpha)
    for name in report["launched"]:
        server = servers[name]
        assert server.status == "ACTIVE"
        assert server.metadata["hepinfra_owner"] == "hepinfra.cloud" and server.metadata["hepinfra_group"] == GROUP
        assert server.metadata["hepinfra_uuid"] == name.split("--")[2]
        assert server.flavor["original_name"] == "w1.small"
    assert not ok(run_module("hepinfra.cloud.worker", args(os_cloud, 4, tmp_path)))["changed"]

    info = ok(run_module("hepinfra.cloud.worker_info", {"clouds": [os_cloud], "group": GROUP,
                                                        "condor": {"collector": False}}))
    assert sorted(w["name"] for w in info["workers"]) == sorted(report["launched"])
    assert {w["cloud_state"] for w in info["workers"]} == {"active"}

    down = ok(run_module("hepinfra.cloud.worker", args(os_cloud, 1, tmp_path)))
    assert len(down["clouds"]["os"]["deleted"]) == 3
    wait_gone(alpha, down["clouds"]["os"]["deleted"])
    left = ours(alpha)
    assert lookalike.name in left and len(left) == 2


def wait_gone(alpha, names, timeout=60):  # pylint: disable=redefined-outer-name
    """Nova deletes asynchronously: wait until the servers are gone."""
    deadline = time.monotonic() + timeout
    while set(names) & set(ours(alpha)):
        assert time.monotonic() < deadline, "servers not deleted: %s" % (set(names) & set(ours(alpha)))
        time.sleep(1)


def test_quota_gives_a_partial_success_reported_per_worker(os_cloud, alpha, run_module, tmp_path):
    # pylint: disable=redefined-outer-name
    testbed.set_quota("alpha", instances=2)
    result = run_module("hepinfra.cloud.worker", args(os_cloud, 5, tmp_path, parallel=1))
    assert result.failed and "failed on 1 of 1 clouds" in result.msg
    report = result.result["clouds"]["os"]
    # Nova refuses some creates at once and lets others through to fail its second quota check
    # in the conductor (the server goes into ERROR): either way one error per worker over quota.
    assert report["failed"] and len(report["errors"]) == 3, report["errors"]
    assert all("Quota exceeded" in error for error in report["errors"]), report["errors"]
    assert sorted(s.status for s in ours(alpha).values() if s.name in report["launched"]).count("ACTIVE") == 2
    # The next run removes what went into error and keeps the two.
    servers = ours(alpha)
    errored = [name for name in report["launched"] if name in servers and servers[name].status == "ERROR"]
    again = ok(run_module("hepinfra.cloud.worker", args(os_cloud, 2, tmp_path)))
    assert sorted(again["clouds"]["os"]["deleted"]) == sorted(errored) and again["clouds"]["os"]["launched"] == []
    wait_gone(alpha, errored)
    assert sorted(s.status for s in ours(alpha).values()) == ["ACTIVE", "ACTIVE"]


def test_a_server_in_error_is_replaced(os_cloud, alpha, run_module, tmp_path):
    # pylint: disable=redefined-outer-name
    up = ok(run_module("hepinfra.cloud.worker", args(os_cloud, 2, tmp_path)))
    broken = up["clouds"]["os"]["launched"][0]
    testbed.force_error(ours(alpha)[broken].id)
    again = ok(run_module("hepinfra.cloud.worker", args(os_cloud, 2, tmp_path)))
    report = again["clouds"]["os"]
    assert report["deleted"] == [broken] and len(report["launched"]) == 1
    assert [w for w in again["workers"] if w["name"] == broken][0]["reason"].startswith("the instance is in error")
    wait_gone(alpha, [broken])
    assert len(ours(alpha)) == 2


def test_bad_credentials_fail_that_cloud_only_and_hide_the_password(os_cloud, run_module, libvirt_cloud, tmp_path):
    lv_cloud, _path = libvirt_cloud
    password = "wrong-" + uuid.uuid4().hex
    auth = {**os_cloud["openstack"]["auth"], "password": password}
    bad = {**os_cloud, "openstack": {**os_cloud["openstack"], "auth": auth}}
    task = {**args(bad, 1, tmp_path), "clouds": [bad, lv_cloud],
            "placements": [{"cloud": "os", "count": 1},
                           {"cloud": "lv", "count": 1, "flavor": "w1.tiny", "image": "wimg"}]}
    result = run_module("hepinfra.cloud.worker", task, verbosity=3)
    assert result.failed and "authentication failed" in result.result["clouds"]["os"]["error"]
    assert len(result.result["clouds"]["lv"]["launched"]) == 1          # the other cloud was done
    assert password not in result.output and password not in str(result.result)


def test_a_scaling_cycle_reads_novas_flavors_usage_and_quota(os_cloud, alpha, htcondor_pool, libvirt_cloud,
                                                             run_module, tmp_path):
    """hepinfra.cloud.scale on the real Nova API: flavors listed from Nova, the project's usage and quota
    with count_project_usage, launches there until the quota is reached, the rest on the next cloud."""
    # pylint: disable=redefined-outer-name
    local, _pool_path = libvirt_cloud                                  # "lv", priority 10, 1-vCPU flavors of 64 and 128 MiB
    cloud = dict(os_cloud, priority=20, limits={"count_project_usage": True})
    testbed.set_quota("alpha", instances=3)
    other = alpha.compute.create_server(
        name=f"not-a-worker-{uuid.uuid4().hex[:6]}", flavor_id=alpha.compute.find_flavor("w1.small").id,
        image_id=alpha.image.find_image("wimg").id, networks=[{"uuid": alpha.network.find_network("private").id}])
    env = {"CONTAINERS_CONF": str(podman.containers_conf())}
    task = {"clouds": [cloud, local],
            "groups": [{"name": GROUP, "accounting_groups": ["group_g1"], "config": "c1", "image": "wimg"}],
            "flavors": {"os": ["w1.small", "w1.medium", "w1.large"]},
            "policy": {"memory_reserve_mb": 0},            # lv's 64 MiB flavor fits a 64 MiB job exactly
            "condor": {"tokens": False, "command_prefix": ["podman", "exec", htcondor_pool.container]},
            "lock_file": str(tmp_path / "scale.lock"), "history": "", "drain_wait": 0}
    submit = ("executable = /bin/sleep\ntransfer_executable = false\narguments = 60\naccounting_group = group_g1.prod\n"
              "accounting_group_user = submitter\nrequest_cpus = {cpus}\nrequest_memory = 64\nqueue {count}\n")
    htcondor_pool.run(["condor_rm", "-all"], user=htcondor_pool.submit_user, check=False)
    try:
        alpha.compute.wait_for_server(other, wait=120)
        htcondor_pool.submit(submit.format(cpus=1, count=4))
        htcondor_pool.submit(submit.format(cpus=3, count=1))
        cycle = ok(run_module("hepinfra.cloud.scale", task, env=env))
        # Nova's quota (3) less what the project runs (1 server that is not a worker) leaves room for 2.
        assert cycle["clouds"]["os"]["used"]["instances"] == 1 and cycle["clouds"]["os"]["limits"]["instances"] == 3
        assert sorted(cycle["clouds"]["os"]["flavors"]) == ["w1.large", "w1.medium", "w1.small"]
        assert [(p["cloud"], p["flavor"], p["count"]) for p in cycle["plan"]["launch"]] == \
            [("os", "w1.small", 2), ("lv", "w1.tiny", 2)]
        # The 3-core job fits w1.large (the smallest of Nova's that does) but the project is full: shortfall.
        assert cycle["plan"]["shortfall"] == [{"group": GROUP, "cpus": 3, "memory_mb": 64, "disk_mb": 1,
                                               "clouds": [], "jobs": 1}]
        servers = ours(alpha)
        assert len(servers) == 2 and {s.metadata["hepinfra_flavor"] for s in servers.values()} == {"w1.small"}
        assert len(cycle["launched"]) == 4
        again = ok(run_module("hepinfra.cloud.scale", task, env=env))
        assert again["launched"] == [] and again["workers"]["os"] == {"starting": 2}
        # No job, and past come-alive: the workers on both clouds go.
        htcondor_pool.run(["condor_rm", "-all"], user=htcondor_pool.submit_user, check=False)
        gone = ok(run_module("hepinfra.cloud.scale", {**task, "policy": {"come_alive": 0, "memory_reserve_mb": 0}},
                             env=env))
        assert len(gone["deleted"]) == 4 and gone["launched"] == []
        wait_gone(alpha, list(servers))
    finally:
        htcondor_pool.run(["condor_rm", "-all"], user=htcondor_pool.submit_user, check=False)
        alpha.compute.delete_server(other, ignore_missing=True)


def test_a_cycle_warns_of_an_expiring_application_credential(compute, os_cloud, htcondor_pool, run_module, tmp_path):
    """The scaling modules pass on the clouds' credential warnings: a cycle run from a timer is where an
    expiring application credential is seen first."""
    # pylint: disable=redefined-outer-name
    expires = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=5)
    credential = testbed.application_credential("alpha", "hepinfra-scale-" + tmp_path.name[-8:], expires_at=expires)
    cloud = dict(os_cloud, credential_warning_days=14, openstack={
        "region_name": compute.compute["region"],
        "auth": {"auth_url": compute.auth("alpha")["auth_url"], "application_credential_id": credential["id"],
                 "application_credential_secret": credential["secret"]}})
    task = {"clouds": [cloud], "groups": [{"name": GROUP, "accounting_groups": ["group_g1"], "image": "wimg"}],
            "condor": {"tokens": False, "command_prefix": ["podman", "exec", htcondor_pool.container]}}
    env = {"CONTAINERS_CONF": str(podman.containers_conf())}
    for module in ("hepinfra.cloud.demand_info", "hepinfra.cloud.scale"):
        extra = {"lock_file": str(tmp_path / "scale.lock"), "history": ""} if module.endswith("scale") else {}
        outcome = run_module(module, {**task, **extra}, env=env)
        result = ok(outcome)
        assert result["clouds"]["os"]["ok"], result["clouds"]["os"]
        assert "cloud os: its application credential expires in" in outcome.output, (module, outcome.output[-2000:])
        assert credential["secret"] not in outcome.output


def test_the_awx_openstack_credential_reaches_the_cloud(os_cloud, alpha, run_module, tmp_path):
    """docs/awx/credential-type-openstack.yml as AWX injects it: the clouds.yaml file it writes, named by
    the extra variable it sets, is what a cloud definition's openstack.cloud/config_file use."""
    # pylint: disable=redefined-outer-name
    kind = yaml.safe_load((Path(__file__).resolve().parents[3] / "docs" / "awx" / "credential-type-openstack.yml").read_text())
    clouds_yaml = yaml.safe_dump({"clouds": {"site-os": {"auth": os_cloud["openstack"]["auth"],
                                                         "region_name": os_cloud["openstack"]["region_name"]}}})
    injected = tmp_path / "awx-credential-file"
    injected.write_text(jinja2.Template(kind["injectors"]["file"]["template"]).render(clouds_yaml=clouds_yaml))
    config = jinja2.Template(kind["injectors"]["extra_vars"]["hepinfra_openstack_config"]).render(
        tower={"filename": str(injected)})
    cloud = {"name": "os", "type": "openstack", "openstack": {"cloud": "site-os", "config_file": config}}
    server = alpha.compute.create_server(
        name=f"{GROUP}--os--{uuid.uuid4()}", flavor_id=alpha.compute.find_flavor("w1.small").id,
        image_id=alpha.image.find_image("wimg").id, networks=[{"uuid": alpha.network.find_network("private").id}])
    info = ok(run_module("hepinfra.cloud.worker_info", {"clouds": [cloud], "group": GROUP,
                                                        "condor": {"collector": False}}))
    # It listed the project's servers: the look-alike is there (not owned), the cloud answered.
    assert info["clouds"]["os"]["ok"] and info["clouds"]["os"]["foreign"] == [server.name]
    password = os_cloud["openstack"]["auth"]["password"]
    assert password not in json.dumps(info)
