# -*- coding: utf-8 -*-
# Copyright: hepinfra.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import datetime

import pytest

from ansible_collections.hepinfra.cloud.plugins.module_utils import _clouds
from ansible_collections.hepinfra.cloud.plugins.module_utils._base import HepinfraError

APPCRED = {"auth_url": "https://keystone.example.org/v3", "application_credential_id": "abc",
           "application_credential_secret": "s3cret"}


def cloud(name="c1", **extra):
    base = {"name": name, "type": "openstack", "openstack": {"auth": dict(APPCRED)}}
    base.update(extra)
    return base


def test_defaults_per_type():
    clouds = _clouds.validate_clouds([
        cloud("os"),
        {"name": "hv", "type": "libvirt", "libvirt": {"uri": "qemu+ssh://root@hv01/system", "pool": "images"}},
    ])
    assert clouds["os"].user_data == {"max_bytes": 65535, "limit_after_base64": True, "compression": True}
    assert clouds["hv"].user_data["limit_after_base64"] is False
    assert clouds["os"].image_formats == ["qcow2", "raw"]
    assert clouds["os"].credential_warning_days == 30
    assert _clouds.auth_type(clouds["os"].openstack) == "v3applicationcredential"


def test_every_problem_is_named_with_cloud_and_field():
    with pytest.raises(HepinfraError) as caught:
        _clouds.validate_clouds([
            {"name": "a", "type": "openstack"},
            cloud("b", openstack={"cloud": "x", "auth": dict(APPCRED)}),
            cloud("c", openstack={"auth": {"auth_url": "https://k/v3", "username": "u"}}),
            {"name": "d", "type": "libvirt"},
            cloud("e", limits={"cores": -4}),
            cloud("e"),
            cloud("bad name"),
        ])
    text = str(caught.value)
    assert "7 problems" in text
    for expected in ("clouds[0] (a): type openstack needs an 'openstack' section",
                     "clouds[1] (b): openstack needs exactly one of 'cloud'",
                     "clouds[2] (c): openstack.auth needs username and password",
                     "clouds[3] (d): type libvirt needs a 'libvirt' section",
                     "clouds[4] (e): limits.cores must be 0 or more, not -4",
                     "clouds[5] (e): the name e is used twice",
                     "clouds[6] (bad name): name must be"):
        assert expected in text


def test_structure_errors_come_from_the_argument_spec():
    with pytest.raises(HepinfraError) as caught:
        _clouds.validate_clouds([{"name": "a", "type": "ec3"}])
    assert "ec3" in str(caught.value)
    with pytest.raises(HepinfraError) as caught:
        _clouds.validate_clouds([cloud("a", limits={"cores": "many"})])
    assert "cores" in str(caught.value)


def test_select_by_name_and_priority():
    clouds = _clouds.validate_clouds([cloud("low", priority=1), cloud("high", priority=9), cloud("off", enabled=False)])
    assert [c.name for c in _clouds.select(clouds, None)] == ["high", "low"]
    assert [c.name for c in _clouds.select(clouds, ["low", "off"])] == ["low"]
    assert [c.name for c in _clouds.select(clouds, ["off"], include_disabled=True)] == ["off"]
    with pytest.raises(HepinfraError, match="no cloud named nope"):
        _clouds.select(clouds, ["nope"])


def test_describe_shows_no_credentials():
    described = _clouds.validate_clouds([cloud("a")])["a"].describe()
    assert "s3cret" not in str(described) and described["auth_url"] == APPCRED["auth_url"]


@pytest.mark.parametrize("text", ["2026-12-03T10:00:00.000000", "2026-12-03T10:00:00Z", "2026-12-03T11:00:00+01:00"])
def test_keystone_times_parse_to_utc(text):
    assert _clouds.parse_time(text) == datetime.datetime(2026, 12, 3, 10, 0, tzinfo=datetime.timezone.utc)


def test_expiry_warning_window():
    item = _clouds.validate_clouds([cloud("a", credential_warning_days=10)])["a"]
    now = datetime.datetime(2026, 11, 28, tzinfo=datetime.timezone.utc)
    assert _clouds.expiry_warning(item, None, now) is None
    assert _clouds.expiry_warning(item, now + datetime.timedelta(days=11), now) is None
    assert "expires in 9.5 days" in _clouds.expiry_warning(item, now + datetime.timedelta(days=9, hours=12), now)
    assert "expired" in _clouds.expiry_warning(item, now - datetime.timedelta(hours=1), now)
