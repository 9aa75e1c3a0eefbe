# -*- coding: utf-8 -*-
# Copyright: hepinfra.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The record -> host transform of the CMDB inventory, on responses recorded from a real NetBox.

fixtures/netbox_*.json are the `results` of NetBox 4.7's device and VM listings as the
plugin asks for them (tests/integration/cmdb/seed.py made the data); the end-to-end
tests in tests/integration/cmdb run the same transform through ansible-inventory.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ansible_collections.hepinfra.cloud.plugins.plugin_utils._cmdb import (
    CmdbError,
    NetBoxSettings,
    RestMapping,
    cache_key,
    check_token,
    netbox_fields,
    netbox_host,
    netbox_hosts,
    netbox_token_header,
    public_url,
    query_params,
    redact,
    rest_hosts,
    safe_group_name,
    simplify,
    slim_netbox_record,
)

FIXTURES = Path(__file__).parent / "fixtures"


def raw(kind: str) -> list[dict]:
    return json.loads((FIXTURES / ("netbox_%s.json" % kind)).read_text())


def recorded() -> dict:
    """What the fetch step keeps (and caches) from the recorded listings."""
    return {"records": {kind: [slim_netbox_record(r) for r in raw(kind)] for kind in ("devices", "virtual_machines")}}


def test_slim_records_keep_what_the_inventory_reads_only():
    squid = raw("devices")[0]
    slim = slim_netbox_record(squid)
    assert slim["site"] == "cern" and slim["rack"] == "R1-01" and slim["status"] == "active"
    assert slim["device_type"] == "sys-6029" and slim["manufacturer"] == "supermicro"
    assert slim["primary_ip6"] == {"address": "2001:db8::11", "dns_name": "squid01.cern.example"}
    assert slim["custom_fields"]["experiments"] == ["atlas", "belle2"]
    assert slim["tags"] == ["atlas"]
    assert len(json.dumps(slim)) * 4 < len(json.dumps(squid))  # what the cache holds per host


def hosts_by_name(settings: NetBoxSettings | None = None, warnings: list | None = None) -> dict:
    sink = warnings if warnings is not None else []
    return {h.name: h for h in netbox_hosts(recorded(), settings or NetBoxSettings(), sink.append)}


def test_device_variables_are_plain_values():
    squid = hosts_by_name()["squid01"]
    assert squid.variables == {
        "cmdb_kind": "device",
        "cmdb_id": 1,
        "cmdb_site": "cern",
        "cmdb_role": "squid",
        "cmdb_platform": "debian-13",
        "cmdb_tenant": "atlas",
        "cmdb_status": "active",
        "cmdb_tags": ["atlas"],
        "cmdb_cluster": None,
        "cmdb_primary_ip4": "192.0.2.11",
        "cmdb_primary_ip6": "2001:db8::11",
        "cmdb_custom_fields": {"admin_user": "squidadm", "batch_system": "htcondor", "experiments": ["atlas", "belle2"], "gpus": None, "mgmt_address": None},
        "cmdb_location": "b513",
        "cmdb_rack": "R1-01",
        "cmdb_device_type": "sys-6029",
        "cmdb_manufacturer": "supermicro",
        "ansible_host": "192.0.2.11",
    }
    assert squid.groups == ["site_cern", "role_squid", "tag_atlas", "status_active"]


def test_vm_variables_and_groups():
    worker = hosts_by_name(NetBoxSettings(group_by=["kind", "cluster", "tag", "platform"]))["worker-a"]
    assert worker.variables["cmdb_kind"] == "virtual_machine"
    assert (worker.variables["cmdb_vcpus"], worker.variables["cmdb_memory"], worker.variables["cmdb_disk"]) == (8, 16384, 40)
    assert worker.variables["cmdb_cluster"] == "cern-openstack"
    assert "cmdb_rack" not in worker.variables
    assert worker.groups == ["kind_virtual_machine", "cluster_cern_openstack", "tag_atlas", "tag_htcondor_worker", "platform_debian_13"]


def test_devices_come_first_and_duplicates_are_renamed_with_a_warning():
    warnings: list[str] = []
    names = list(hosts_by_name(warnings=warnings))
    assert names == ["squid01", "storage01", "node01", "worker-a", "worker-b", "node01_virtual_machine_3"]
    assert any("node01 -> node01_virtual_machine_3" in w for w in warnings)
    assert any("1 CMDB object(s) without a name" in w for w in warnings)


def test_custom_field_groups_and_group_name_formats():
    settings = NetBoxSettings(
        group_by=["custom_field:experiments", "custom_field:gpus", "status"],
        group_names={"custom_field:experiments": "exp_{value}", "status": "{value}"},
    )
    hosts = hosts_by_name(settings)
    assert hosts["squid01"].groups == ["exp_atlas", "exp_belle2", "active"]
    assert hosts["worker-a"].groups == ["exp_atlas", "gpus_1", "active"]
    assert hosts["storage01"].groups == ["gpus_0", "planned"]  # 0 is a value, None is not


def test_ansible_host_preference_and_sources():
    v6 = hosts_by_name(NetBoxSettings(ip_preference="ipv6"))
    assert v6["squid01"].variables["ansible_host"] == "2001:db8::11"
    assert v6["node01"].variables["ansible_host"] == "192.0.2.31"
    custom = hosts_by_name(NetBoxSettings(ansible_host="custom_field", ansible_host_custom_field="mgmt_address"))
    assert custom["storage01"].variables["ansible_host"] == "storage01-ipmi.desy.example"
    assert "ansible_host" not in custom["squid01"].variables
    assert not any("ansible_host" in h.variables for h in hosts_by_name(NetBoxSettings(ansible_host="none")).values())


def test_dns_name_of_the_primary_address():
    hosts = hosts_by_name(NetBoxSettings(ansible_host="dns_name", ip_preference="ipv6"))
    assert hosts["storage01"].variables["ansible_host"] == "storage01.desy.example"
    assert hosts["squid01"].variables["ansible_host"] == "squid01.cern.example"
    assert "ansible_host" not in hosts["node01"].variables  # its address has no DNS name


def test_extra_fields_and_config_context():
    record = dict(raw("devices")[0])
    record["serial"] = "SQ-0001"
    record["config_context"] = {"squid_port": 3128}
    record = slim_netbox_record(record)
    host = netbox_host(record, "devices", NetBoxSettings(extra_fields=["serial", "missing"], config_context=True))
    assert host.variables["cmdb_serial"] == "SQ-0001"
    assert "cmdb_missing" not in host.variables
    assert host.variables["cmdb_config_context"] == {"squid_port": 3128}


@pytest.mark.parametrize("value, expected", [
    ({"value": "active", "label": "Active"}, "active"),
    ({"id": 1, "url": "u", "name": "CERN", "slug": "cern"}, "cern"),
    ({"id": 2, "url": "u", "name": "R1-01"}, "R1-01"),
    ({"id": 3, "url": "u", "address": "192.0.2.1/24"}, "192.0.2.1/24"),
    ([{"id": 4, "url": "u", "slug": "a"}, {"id": 5, "url": "u", "slug": "b"}], ["a", "b"]),
    ({"name": "json custom field", "slug": "kept"}, {"name": "json custom field", "slug": "kept"}),
    ({"value": 1, "label": "x", "unit": "GB"}, {"value": 1, "label": "x", "unit": "GB"}),
    ("text", "text"),
    (None, None),
])
def test_simplify(value, expected):
    assert simplify(value) == expected


def test_safe_group_names():
    assert safe_group_name("tag_htcondor-worker") == "tag_htcondor_worker"
    assert safe_group_name("2024_rack") == "_2024_rack"
    assert safe_group_name("site_cern.ch") == "site_cern_ch"


def test_cache_key_follows_what_is_fetched_only():
    settings = {"backend": "netbox", "url": "https://nb", "kinds": {"devices": {"site": "cern"}}}
    same = {"kinds": {"devices": {"site": "cern"}}, "url": "https://nb", "backend": "netbox"}
    assert cache_key("hepinfra.cloud.cmdb", settings) == cache_key("hepinfra.cloud.cmdb", same)
    assert cache_key("hepinfra.cloud.cmdb", settings) != cache_key("hepinfra.cloud.cmdb", {**settings, "kinds": {"devices": {"site": "desy"}}})
    assert cache_key("hepinfra.cloud.cmdb", settings) != cache_key("hepinfra.cloud.cmdb", {**settings, "url": "https://nb2"})
    assert cache_key("hepinfra.cloud.cmdb", settings).startswith("hepinfra_cloud_cmdb_")


def test_query_params_repeat_lists_and_spell_booleans():
    assert query_params({"site": ["cern", "desy"], "has_primary_ip": True}) == [("has_primary_ip", "true"), ("site", "cern"), ("site", "desy")]


def test_token_headers():
    assert netbox_token_header("0123456789abcdef0123456789abcdef01234567") == "Token 0123456789abcdef0123456789abcdef01234567"
    assert netbox_token_header("nbt_abc.def") == "Bearer nbt_abc.def"
    assert netbox_token_header("Bearer x") == "Bearer x"


def test_redact():
    assert redact("bad token s3cr3t in s3cr3t", ["s3cr3t", None]) == "bad token ******** in ********"
    assert redact("Invalid header value b'Token ab\\ncd'", ["Token ab\ncd"]) == "Invalid header value b'********'"


def test_public_url_drops_credentials_and_query():
    assert public_url("https://user:pw@cmdb.example:8443/api/x/?token=abc") == "https://cmdb.example:8443/api/x/"


def test_tokens_are_checked():
    assert check_token("  abc\n") == "abc"
    with pytest.raises(CmdbError, match="control characters"):
        check_token("ab\ncd")


def rest_mapping(**overrides) -> RestMapping:
    expressions = {"records": "items", "host_name": "fqdn", "host_vars": "{ansible_host: ip, cmdb_rack: loc.rack}", "host_groups": "role"}
    expressions.update(overrides)
    return RestMapping.compile(expressions)


def test_rest_records_to_hosts():
    data = {"records": {"rest": [
        {"fqdn": "a.example", "ip": "10.0.0.1", "loc": {"rack": "A1"}, "role": "worker"},
        {"fqdn": "b.example", "ip": "10.0.0.2", "loc": None, "role": ["storage", "squid-cache"]},
        {"fqdn": None, "ip": "10.0.0.3"},
    ]}}
    warnings: list[str] = []
    hosts = {h.name: h for h in rest_hosts(data, rest_mapping(), warnings.append)}
    assert hosts["a.example"].variables == {"ansible_host": "10.0.0.1", "cmdb_rack": "A1"}
    assert hosts["a.example"].groups == ["worker"]
    assert hosts["b.example"].variables == {"ansible_host": "10.0.0.2", "cmdb_rack": None}
    assert hosts["b.example"].groups == ["storage", "squid_cache"]
    assert warnings == ["1 CMDB record(s) gave no host name through rest_host_name and were left out"]


def test_rest_mapping_errors():
    with pytest.raises(CmdbError, match="rest_host_name is required"):
        RestMapping.compile({"records": "items", "host_name": None})
    with pytest.raises(CmdbError, match="rest_host_vars is not a valid JMESPath expression"):
        RestMapping.compile({"host_name": "a", "host_vars": "{a: "})
    with pytest.raises(CmdbError, match="must give a dict"):
        rest_hosts({"records": {"rest": [{"fqdn": "a"}]}}, rest_mapping(host_vars="fqdn"), print)


def test_host_variables_limit_the_cmdb_variables_not_the_groups():
    settings = NetBoxSettings(host_variables=["site", "tags"], extra_fields=["serial"], group_by=["role"])
    squid = hosts_by_name(settings)["squid01"]
    assert squid.variables == {"cmdb_site": "cern", "cmdb_tags": ["atlas"], "ansible_host": "192.0.2.11"}
    assert squid.groups == ["role_squid"]


def test_only_the_fields_in_use_are_asked_for():
    assert netbox_fields("devices", NetBoxSettings()) == [
        "id", "name", "site", "location", "rack", "role", "platform", "tenant", "tags", "status", "cluster",
        "device_type", "primary_ip4", "primary_ip6", "custom_fields",
    ]
    lean = NetBoxSettings(host_variables=["site"], group_by=["tag", "manufacturer"], ansible_host="none", extra_fields=["serial"])
    assert netbox_fields("devices", lean) == ["id", "name", "site", "tags", "device_type", "serial"]
    by_field = NetBoxSettings(host_variables=[], group_by=["custom_field:gpus"], ansible_host="dns_name")
    assert netbox_fields("virtual_machines", by_field) == ["id", "name", "primary_ip4", "primary_ip6", "custom_fields"]
