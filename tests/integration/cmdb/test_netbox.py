"""hepinfra.cloud.cmdb against a real NetBox: `ansible-inventory --list` vs golden files.

Regenerate the golden files after an intended change with HEPINFRA_UPDATE_GOLDEN=1 and
review the diff before committing it.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from hepinfra_testbed import netbox

GOLDEN = Path(__file__).parent / "golden"


def normalized(data: dict) -> dict:
    """Inventory JSON with host lists sorted, so the comparison does not depend on order."""
    result = json.loads(json.dumps(data))
    for name, group in result.items():
        if name != "_meta" and isinstance(group, dict):
            for key in ("hosts", "children"):
                if key in group:
                    group[key] = sorted(group[key])
    return result


def assert_golden(name: str, data: dict) -> None:
    path = GOLDEN / f"{name}.json"
    text = json.dumps(normalized(data), indent=2, sort_keys=True) + "\n"
    if os.environ.get("HEPINFRA_UPDATE_GOLDEN") == "1":
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    expected = path.read_text()
    if text != expected:
        diff = "".join(difflib.unified_diff(expected.splitlines(True), text.splitlines(True), f"{path.name} (golden)", "ansible-inventory --list"))
        pytest.fail(f"inventory differs from {path.name}:\n{diff}")


def hostvars(result) -> dict:
    return result.data["_meta"]["hostvars"]


def members(result, group: str) -> list[str]:
    return sorted(result.data.get(group, {}).get("hosts", []))


@pytest.fixture
def base(netbox_instance):
    return {"plugin": "hepinfra.cloud.cmdb", "url": netbox_instance.url, "token": netbox_instance.token}


def test_devices_only(base, run_inventory):
    result = run_inventory({**base, "virtual_machines": False})
    assert result.returncode == 0, result.stderr
    assert_golden("devices", result.data)
    assert all(v["cmdb_kind"] == "device" for v in hostvars(result).values())
    assert "without a name were left out" in result.stderr


def test_virtual_machines_only(base, run_inventory):
    result = run_inventory({**base, "devices": False})
    assert result.returncode == 0, result.stderr
    assert_golden("virtual_machines", result.data)
    assert sorted(hostvars(result)) == ["node01", "worker-a", "worker-b"]


def test_devices_and_vms(base, run_inventory):
    every_key = ["kind", "site", "location", "rack", "role", "platform", "tenant", "tag", "status", "cluster", "device_type", "manufacturer"]
    result = run_inventory({**base, "group_by": every_key})
    assert result.returncode == 0, result.stderr
    assert_golden("both", result.data)
    # the VM that shares the device's name is kept under another name, with a warning
    assert "node01" in hostvars(result) and "node01_virtual_machine_3" in hostvars(result)
    assert "renamed: node01 -> node01_virtual_machine_3" in result.stderr


def test_query_filters_per_kind(base, run_inventory):
    result = run_inventory({**base, "device_query_filters": {"site": "cern", "status": "active"}, "vm_query_filters": {"status": ["active", "staged"]}})
    assert result.returncode == 0, result.stderr
    assert_golden("filters", result.data)
    assert sorted(hostvars(result)) == ["node01", "node01_virtual_machine_3", "squid01", "worker-a"]


def test_custom_fields_and_config_context(base, run_inventory):
    result = run_inventory({
        **base,
        "group_by": ["custom_field:batch_system", "custom_field:experiments", "tag"],
        "group_names": {"tag": "{value}", "custom_field:experiments": "exp_{value}"},
        "config_context": True,
        "extra_fields": ["serial"],
    })
    assert result.returncode == 0, result.stderr
    assert_golden("custom_fields", result.data)
    squid = hostvars(result)["squid01"]
    assert squid["cmdb_custom_fields"]["admin_user"] == "squidadm"
    assert squid["cmdb_config_context"] == {"ntp_servers": ["ntp1.cern.example"], "squid_port": 3128}
    assert squid["cmdb_serial"] == "SQ-0001"
    assert members(result, "exp_belle2") == ["squid01", "worker-b"]
    assert members(result, "htcondor_worker") == ["worker-a", "worker-b"]


def test_compose_and_keyed_groups(base, run_inventory):
    result = run_inventory({
        **base,
        "group_by": [],
        "compose": {"ansible_user": "cmdb_custom_fields.admin_user | default('root', true)"},
        "groups": {"gpu_hosts": "(cmdb_custom_fields.gpus | default(0, true) | int) > 0"},
        "keyed_groups": [{"key": "cmdb_platform", "prefix": "os", "default_value": "unknown"}],
        "strict": True,
    })
    assert result.returncode == 0, result.stderr
    assert_golden("constructed", result.data)
    assert hostvars(result)["squid01"]["ansible_user"] == "squidadm"
    assert hostvars(result)["worker-a"]["ansible_user"] == "root"
    assert members(result, "gpu_hosts") == ["worker-a"]
    assert members(result, "os_debian_13") == ["node01", "squid01", "worker-a"]


def test_cmdb_values_are_never_templated(base, run_inventory, tmp_path):
    """A CMDB string that looks like a template stays text, in the inventory and in a play."""
    result = run_inventory(base)
    assert hostvars(result)["worker-b"]["cmdb_custom_fields"]["admin_user"] == "{{ 7 * 6 }}"
    config = tmp_path / "play.cmdb.yml"
    config.write_text(json.dumps(base))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HEPINFRA_CMDB_", "NETBOX_"))}
    env.update({"ANSIBLE_INVENTORY_ENABLED": "hepinfra.cloud.cmdb", "ANSIBLE_NOCOLOR": "1", "ANSIBLE_INVENTORY_UNPARSED_FAILED": "true"})
    proc = subprocess.run(["ansible", "-i", str(config), "worker-b", "-m", "ansible.builtin.debug", "-a", "var=cmdb_custom_fields.admin_user"],
                          capture_output=True, text=True, env=env, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert '"cmdb_custom_fields.admin_user": "{{ 7 * 6 }}"' in proc.stdout
    assert "42" not in proc.stdout


def test_strict_reports_a_broken_expression(base, run_inventory):
    broken = {**base, "compose": {"x": "cmdb_no_such_variable.attribute"}}
    assert run_inventory({**broken, "strict": False}).returncode == 0
    result = run_inventory({**broken, "strict": True})
    assert result.returncode != 0
    assert "cmdb_no_such_variable" in result.stderr


def test_ansible_host_sources(base, run_inventory):
    v4 = hostvars(run_inventory(base))
    assert v4["squid01"]["ansible_host"] == "192.0.2.11"
    assert v4["storage01"]["ansible_host"] == "2001:db8:1::21"  # no IPv4: the IPv6 address
    v6 = hostvars(run_inventory({**base, "ip_preference": "ipv6"}))
    assert v6["squid01"]["ansible_host"] == "2001:db8::11"
    assert v6["node01"]["ansible_host"] == "192.0.2.31"  # no IPv6: the IPv4 address
    dns = hostvars(run_inventory({**base, "ansible_host": "dns_name", "ip_preference": "ipv6"}))
    assert dns["squid01"]["ansible_host"] == "squid01.cern.example"
    assert dns["worker-a"]["ansible_host"] == "worker-a.cloud.example"
    assert "ansible_host" not in dns["node01"]  # no DNS name anywhere
    custom = hostvars(run_inventory({**base, "ansible_host": "custom_field", "ansible_host_custom_field": "mgmt_address"}))
    assert custom["storage01"]["ansible_host"] == "storage01-ipmi.desy.example"
    assert "ansible_host" not in custom["squid01"]
    none = hostvars(run_inventory({**base, "ansible_host": "none"}))
    assert not any("ansible_host" in v for v in none.values())


def test_credentials_from_the_environment_and_v2_tokens(netbox_instance, run_inventory):
    reference = run_inventory({"plugin": "hepinfra.cloud.cmdb", "url": netbox_instance.url, "token": netbox_instance.token})
    from_env = run_inventory({"plugin": "hepinfra.cloud.cmdb"}, env={"HEPINFRA_CMDB_URL": netbox_instance.url, "HEPINFRA_CMDB_TOKEN": netbox.V2_TOKEN})
    assert from_env.returncode == 0, from_env.stderr
    assert from_env.data == reference.data
    nb_names = run_inventory({"plugin": "hepinfra.cloud.cmdb"}, env={"NETBOX_API": netbox_instance.url, "NETBOX_TOKEN": netbox_instance.token})
    assert nb_names.data == reference.data


def test_small_pages_fetched_in_parallel_give_the_same_inventory(base, run_inventory):
    whole = run_inventory(base)
    paged = run_inventory({**base, "page_size": 2, "max_workers": 3}, env={"ANSIBLE_VERBOSITY": "3"})
    assert paged.returncode == 0, paged.stderr
    assert paged.data == whole.data
    # 4 devices in pages of 2 and 3 VMs in pages of 2: 2 + 2 requests, not one per host
    assert re.search(r"\b4 request\(s\) to ", paged.stdout + paged.stderr), paged.stderr[-2000:]


def test_unreachable_cmdb_names_the_endpoint(run_inventory):
    result = run_inventory({"plugin": "hepinfra.cloud.cmdb", "url": "http://127.0.0.1:9", "token": netbox.ADMIN_TOKEN})
    assert result.returncode != 0
    assert "cannot reach the CMDB at http://127.0.0.1:9/api/" in result.stderr
    assert netbox.ADMIN_TOKEN not in result.stderr


def test_wrong_token_is_a_clear_error_without_the_token(netbox_instance, run_inventory):
    wrong = "f" * 40
    result = run_inventory({"plugin": "hepinfra.cloud.cmdb", "url": netbox_instance.url, "token": wrong})
    assert result.returncode != 0
    assert f"the CMDB at {netbox_instance.url}/api/" in result.stderr
    assert "rejected the credentials" in result.stderr
    assert wrong not in result.stderr and wrong[:20] not in result.stderr


def test_token_with_a_line_break_is_refused_without_showing_it(netbox_instance, run_inventory):
    result = run_inventory({"plugin": "hepinfra.cloud.cmdb", "url": netbox_instance.url, "token": "0123456789ab\ncdef0123456789abcdef01234567"})
    assert result.returncode != 0
    assert "the token contains control characters or line breaks" in result.stderr
    assert "0123456789ab" not in result.stderr and "cdef0123456789" not in result.stderr


def test_not_a_netbox_url(netbox_instance, run_inventory):
    result = run_inventory({"plugin": "hepinfra.cloud.cmdb", "url": netbox_instance.url + "/static", "token": netbox_instance.token})
    assert result.returncode != 0
    assert "/static/api/dcim/devices/" in result.stderr


def test_forbidden_object_type_warns_and_keeps_the_others(netbox_instance, run_inventory):
    result = run_inventory({"plugin": "hepinfra.cloud.cmdb", "url": netbox_instance.url, "token": netbox.READER_TOKEN})
    assert result.returncode == 0, result.stderr
    assert sorted(hostvars(result)) == ["node01", "squid01", "storage01"]
    assert "may not read virtual machines" in " ".join(result.stderr.split())
    only_vms = run_inventory({"plugin": "hepinfra.cloud.cmdb", "url": netbox_instance.url, "token": netbox.READER_TOKEN, "devices": False})
    assert only_vms.returncode != 0
    assert "may not read any selected object type" in only_vms.stderr


def test_bad_options_are_refused(base, run_inventory):
    result = run_inventory({**base, "group_by": ["sites"]})
    assert result.returncode != 0 and "group_by entry 'sites'" in result.stderr
    result = run_inventory({**base, "ansible_host": "custom_field"})
    assert result.returncode != 0 and "needs ansible_host_custom_field" in result.stderr


def test_cache_answers_while_the_cmdb_is_down(netbox_instance, base, run_inventory, tmp_path):
    cached = {**base, "cache": True, "cache_plugin": "ansible.builtin.jsonfile", "cache_connection": str(tmp_path / "cache"), "cache_timeout": 600}
    first = run_inventory(cached)
    assert first.returncode == 0, first.stderr
    other = run_inventory({**cached, "virtual_machines": False}, name="other.cmdb.yml")
    assert sorted(hostvars(other)) == ["node01", "squid01", "storage01"]
    assert len(list((tmp_path / "cache").iterdir())) == 2  # two sources, two entries
    # the same source with a token that may read less is another entry, not the first one's data
    reader = run_inventory({**cached, "token": netbox.READER_TOKEN}, name="reader.cmdb.yml")
    assert sorted(hostvars(reader)) == ["node01", "squid01", "storage01"]
    assert len(list((tmp_path / "cache").iterdir())) == 3
    netbox.http_down()
    try:
        again = run_inventory(cached)
        assert again.returncode == 0, again.stderr
        assert again.data == first.data
        # another filter is another cache entry: never answered from the first one
        changed = run_inventory({**cached, "device_query_filters": {"site": "desy"}})
        assert changed.returncode != 0 and "cannot reach the CMDB" in changed.stderr
        flushed = run_inventory(cached, flush=True)
        assert flushed.returncode != 0 and "cannot reach the CMDB" in flushed.stderr
    finally:
        netbox.http_up(Path(netbox_instance.root))
    refreshed = run_inventory(cached, flush=True)
    assert refreshed.returncode == 0 and refreshed.data == first.data
