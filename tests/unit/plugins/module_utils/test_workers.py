# -*- coding: utf-8 -*-
# Copyright: hepinfra.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import base64
import json
import os

import pytest

from ansible_collections.hepinfra.cloud.plugins.module_utils import _clouds, _worker_clouds, _workers as W
from ansible_collections.hepinfra.cloud.plugins.module_utils._base import HepinfraError

NOW = 1_800_000_000.0


def worker(index, created_ago=600, cloud_state=W.ACTIVE, draining=False, uuid=None):
    worker_uuid = uuid or "00000000-0000-4000-8000-%012d" % index
    name = W.worker_name("g1", "c1", worker_uuid)
    meta = W.ownership("g1", "cfg", "c1", worker_uuid, "f", "img", NOW - created_ago, NOW + 86400, "")
    if draining:
        meta[W.META_DRAINING] = "%d" % (NOW - 30)
    return W.worker_from(name, meta, "id-%d" % index, cloud_state, cloud_state)


def slot(target, state="Unclaimed", since=0.0, **extra):
    ad = {W.UUID_ATTRIBUTE: target.uuid, "Machine": target.name + ".example.org", "State": state,
          "EnteredCurrentState": since}
    ad.update(extra)
    return ad


def actions(plan):
    return {step.worker.instance_id: (step.action, step.reason) for step in plan.steps}


def test_names_are_lower_case_and_parse_back():
    name = W.worker_name("atlas", "CERN.OS", "ABCDEF01-0000-4000-8000-000000000001")
    assert name == "atlas--cern.os--abcdef01-0000-4000-8000-000000000001"
    assert W.parse_name(name) == ("atlas", "cern.os", "abcdef01-0000-4000-8000-000000000001")
    assert W.parse_name("atlas--cern--not-a-uuid") is None
    assert W.parse_name("atlas-cern-abcdef01-0000-4000-8000-000000000001") is None


@pytest.mark.parametrize("group", ["Atlas", "a--b", "-a", "a" * 41, "", "a_b"])
def test_bad_groups_are_refused(group):
    with pytest.raises(HepinfraError, match="group"):
        W.check_group(group)


def test_ownership_needs_the_mark_and_a_matching_name():
    target = worker(1)
    meta = W.ownership("g1", "cfg", "c1", target.uuid, "f", "img", NOW, NOW, "")
    assert W.owned(target.name, meta, "c1")
    assert not W.owned(target.name, {**meta, W.META_OWNER: "someone"}, "c1")
    assert not W.owned(target.name, {}, "c1")                        # a look-alike name without the mark
    assert not W.owned("other-name", meta, "c1")                      # a copied mark on another name
    assert not W.owned(target.name, {**meta, W.META_UUID: "x"}, "c1")
    assert not W.owned(target.name, meta, "c2")                       # another cloud's worker


def test_pool_states_from_slots():
    idle, busy, starting, failed, draining = worker(1), worker(2), worker(3), worker(4, cloud_state=W.FAILED), \
        worker(5, draining=True)
    slots = [slot(idle, since=NOW - 300), slot(busy, "Claimed"),
             {"Machine": draining.name, "State": "Unclaimed"}]       # matched by host name
    W.attach_slots([idle, busy, starting, failed, draining], slots)
    assert [w.pool_state for w in (idle, busy, starting, failed, draining)] == \
        [W.IDLE, W.BUSY, W.UNREGISTERED, W.ERROR, W.DRAINING]
    assert idle.idle_since == NOW - 300 and busy.claimed == 1


def test_partitionable_slot_with_children_is_busy():
    target = worker(1)
    W.attach_slots([target], [slot(target, PartitionableSlot=True, NumDynamicSlots=1)])
    assert target.pool_state == W.BUSY


def test_scale_up_counts_only_healthy_workers():
    workers = [worker(1), worker(2, cloud_state=W.FAILED), worker(3, draining=True)]
    W.attach_slots(workers, [slot(workers[0]), slot(workers[2], "Claimed")])
    plan = W.plan_scale(workers, 3, NOW, 1800)
    assert plan.launch == 2
    assert actions(plan)["id-2"][0] == "delete" and actions(plan)["id-3"][0] == "keep"


def test_scale_down_takes_idle_first_and_never_deletes_busy():
    busy, idle_old, idle_new, starting = worker(1), worker(2), worker(3), worker(4, created_ago=60)
    W.attach_slots([busy, idle_old, idle_new, starting],
                   [slot(busy, "Claimed"), slot(idle_old, since=NOW - 900), slot(idle_new, since=NOW - 60)])
    plan = W.plan_scale([busy, idle_old, idle_new, starting], 3, NOW, 1800)
    got = actions(plan)
    assert got["id-2"][0] == "drain" and got["id-3"][0] == "keep" and got["id-1"][0] == "keep"
    assert got["id-4"][0] == "keep"
    got = actions(W.plan_scale([busy, idle_old, idle_new, starting], 1, NOW, 1800))
    assert [got[key][0] for key in ("id-2", "id-3", "id-4", "id-1")] == ["drain", "drain", "delete", "keep"]
    plan = W.plan_scale([busy, idle_old, idle_new, starting], 0, NOW, 1800)
    got = actions(plan)
    assert got["id-1"][0] == "drain" and "busy" in got["id-1"][1]          # drained, not deleted
    assert got["id-4"][0] == "delete"                                     # no slots yet: nothing to lose
    assert not [s for s in plan.steps if s.worker is busy and s.action == "delete"]


def test_errored_and_never_registered_are_deleted_whatever_the_count():
    late, failed, young = worker(1, created_ago=4000), worker(2, cloud_state=W.FAILED), worker(3, created_ago=10)
    W.attach_slots([late, failed, young], [])
    plan = W.plan_scale([late, failed, young], 5, NOW, 1800)
    got = actions(plan)
    assert got["id-1"] == ("delete", "never registered in the pool within 1800 s")
    assert got["id-2"][0] == "delete" and got["id-3"][0] == "keep"
    assert plan.launch == 4


def test_draining_worker_is_deleted_once_its_slots_are_gone():
    target = worker(1, draining=True)
    W.attach_slots([target], [slot(target, "Claimed")])
    assert actions(W.plan_scale([target], 0, NOW, 1800))["id-1"][0] == "keep"
    W.attach_slots([target], [])
    assert actions(W.plan_scale([target], 0, NOW, 1800))["id-1"] == ("delete", "drained: not in the pool")


def test_past_lifetime_is_drained():
    target = worker(1)
    target.expires = NOW - 1
    W.attach_slots([target], [slot(target)])
    plan = W.plan_scale([target], 1, NOW, 1800)
    assert actions(plan)["id-1"][0] == "drain" and plan.launch == 1


def test_token_claims_read_the_payload():
    payload = base64.urlsafe_b64encode(json.dumps({"sub": "worker-x@pool", "exp": 5}).encode()).rstrip(b"=").decode()
    assert W.token_claims("h.%s.s" % payload) == {"sub": "worker-x@pool", "exp": 5}
    assert W.token_claims("garbage") == {}


def test_audit_log_appends_json_lines(tmp_path):
    log = W.AuditLog(str(tmp_path / "sub" / "audit.jsonl"), "tester")
    log.record("launch", worker(1), reason="count 1")
    log.record("delete", worker(1), reason="count 0")
    lines = [json.loads(line) for line in (tmp_path / "sub" / "audit.jsonl").read_text().splitlines()]
    assert [entry["event"] for entry in lines] == ["launch", "delete"]
    assert lines[0]["who"] == "tester" and lines[0]["worker"] == worker(1).name


def test_audit_log_to_a_device_or_pipe_is_no_error(tmp_path):
    """/dev/null (a site that keeps no log) and a FIFO read by a shipper cannot be fsynced."""
    log = W.AuditLog(os.devnull, "tester")
    log.record("launch", worker(1), reason="count 1")
    assert log.errors == [] and len(log.records) == 1


def test_libvirt_metadata_round_trip():
    meta = W.ownership("g1", "cfg", "c1", "u", "f", "img", NOW, NOW, "worker-u@pool")
    text = _worker_clouds.metadata_xml(meta)
    assert _worker_clouds.parse_metadata(text) == meta
    assert _worker_clouds.parse_metadata("<other a='1'/>") == {}
    assert _worker_clouds.parse_metadata("not xml") == {}


def test_libvirt_flavors_are_checked():
    with pytest.raises(HepinfraError) as error:
        _clouds.normalize([{"name": "hv", "type": "libvirt", "libvirt": {
            "uri": "qemu:///system", "pool": "p", "flavors": {"a": {"vcpus": 0, "memory_mb": 1}, "b": {"vcpus": 1},
                                                              "c": {"vcpus": 1, "memory_mb": 2, "gpu": 1}}}}])
    text = str(error.value)
    assert "libvirt.flavors.a.vcpus must be a positive integer" in text
    assert "libvirt.flavors.b.memory_mb is required" in text
    assert "libvirt.flavors.c: unknown key gpu" in text


def test_console_log_goes_into_the_domain_and_must_be_absolute():
    spec = _worker_clouds.Launch(name="g1--hv--u1", uuid="00000000-0000-4000-8000-000000000001",
                                 metadata={}, user_data=b"", flavor="f", image="img")
    settings = {"vcpus": 1, "memory_mb": 512}
    assert "<log " not in _worker_clouds.domain_xml(spec, settings, "/p/o.qcow2", "/p/s.iso", None)
    xml = _worker_clouds.domain_xml(spec, {**settings, "console_log": "/var/log/workers"}, "/p/o", "/p/s", None)
    assert "<serial type='pty'><log file=\"/var/log/workers/g1--hv--u1.console.log\" append='on'/>" in xml
    with pytest.raises(HepinfraError, match="console_log must be an absolute directory"):
        _clouds.normalize([{"name": "hv", "type": "libvirt", "libvirt": {
            "uri": "qemu:///system", "pool": "p", "console_log": "logs"}}])


def test_drained_slots_mean_the_worker_can_go():
    target = worker(1, draining=True)
    W.attach_slots([target], [slot(target, "Drained", Activity="Retiring"), slot(target, "Claimed", DynamicSlot=True)])
    assert actions(W.plan_scale([target], 0, NOW, 1800))["id-1"][0] == "keep"
    W.attach_slots([target], [slot(target, "Drained", Activity="Idle")])
    assert target.pool_state == W.DRAINING
    assert actions(W.plan_scale([target], 0, NOW, 1800))["id-1"] == ("delete", "drained: no job left on it")


def test_a_worker_seen_in_the_pool_before_is_never_deleted_for_missing_slots():
    target = worker(1, created_ago=4000)
    target.registered_at = NOW - 3000                 # its slots vanished (collector restart, expired token)
    W.attach_slots([target], [])
    assert actions(W.plan_scale([target], 1, NOW, 1800))["id-1"][0] == "keep"
    got = actions(W.plan_scale([target], 0, NOW, 1800))["id-1"]
    assert got[0] == "keep" and "missing from the collector" in got[1]
    target.draining_since = NOW - 60
    assert actions(W.plan_scale([target], 0, NOW, 1800))["id-1"][0] == "keep"
    target.expires = NOW - 1                          # its hard end of life
    assert actions(W.plan_scale([target], 0, NOW, 1800))["id-1"][0] == "delete"


def test_an_instance_in_error_that_runs_jobs_is_drained_not_deleted():
    target = worker(1, cloud_state=W.FAILED)
    W.attach_slots([target], [slot(target, "Claimed")])
    assert actions(W.plan_scale([target], 1, NOW, 1800))["id-1"][0] == "drain"
    target.draining_since = NOW - 10
    assert actions(W.plan_scale([target], 1, NOW, 1800))["id-1"][0] == "keep"


def test_drained_slots_count_as_draining_without_the_mark():
    target = worker(1)
    W.attach_slots([target], [slot(target, "Drained", Activity="Retiring"), slot(target, "Claimed", DynamicSlot=True)])
    plan = W.plan_scale([target], 1, NOW, 1800)
    assert actions(plan)["id-1"][0] == "keep" and plan.launch == 1     # not counted as a healthy worker


@pytest.mark.parametrize("cloud, message", [("hv--a", "single '-'"), ("HV", "lower-case"), ("hv_a", "lower-case"),
                                            ("a" * 20, "over the 63")])
def test_cloud_names_must_fit_host_names(cloud, message):
    with pytest.raises(HepinfraError, match=message):
        W.check_cloud_name("atlas", cloud)
    W.check_cloud_name("atlas", "cern-prod")


class ServerError(Exception):
    """Shaped like openstacksdk's HttpException: a status code on the exception."""

    def __init__(self, status):
        super().__init__("HttpException: %d: Server Error" % status)
        self.status_code = status


def flaky(failures, status=500):
    calls = []

    def call():
        calls.append(1)
        if len(calls) <= failures:
            raise ServerError(status)
        return "answer"
    return call, calls


@pytest.fixture
def openstack_provider(monkeypatch):
    monkeypatch.setattr(_worker_clouds, "RETRY_DELAYS", (0.0, 0.0))
    cloud = _clouds.normalize([{"name": "os", "type": "openstack", "openstack": {"auth": {
        "auth_url": "http://k", "username": "u", "password": "p", "project_name": "p",
        "user_domain_name": "Default", "project_domain_name": "Default"}}}])["os"]
    return _worker_clouds.OpenStackProvider(cloud, {})


def test_a_read_is_repeated_after_a_transient_server_error(openstack_provider):
    call, calls = flaky(2)
    assert openstack_provider._call("list servers", call) == "answer"  # pylint: disable=protected-access
    assert len(calls) == 3


def test_a_persistent_server_error_fails_after_the_last_attempt(openstack_provider):
    call, calls = flaky(5)
    with pytest.raises(HepinfraError) as error:
        openstack_provider._call("list servers", call)  # pylint: disable=protected-access
    assert len(calls) == 3 and "list servers" in str(error.value)


@pytest.mark.parametrize("status", [400, 403, 404, 409])
def test_a_client_error_is_not_repeated(openstack_provider, status):
    call, calls = flaky(1, status)
    with pytest.raises(HepinfraError):
        openstack_provider._call("find image x", call)  # pylint: disable=protected-access
    assert len(calls) == 1


def test_a_create_is_never_repeated(openstack_provider):
    call, calls = flaky(1, 503)
    with pytest.raises(HepinfraError):
        openstack_provider._call("create server x", call, retry=False)  # pylint: disable=protected-access
    assert len(calls) == 1
