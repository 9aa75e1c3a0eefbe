# -*- coding: utf-8 -*-
# Copyright: hepinfra.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The user_data filter: the builder's result as Ansible variables, its errors as filter errors."""

from __future__ import annotations

import base64
import email
import gzip
import json
import random

import pytest

from ansible.errors import AnsibleFilterError
from ansible_collections.hepinfra.cloud.plugins.filter.user_data import FilterModule, user_data

PARTS = [
    {"type": "cloud-config", "content": "hostname: {{ hostname }}\n"},
    {"type": "shell", "content": "#!/bin/sh\n# start the startd\ncondor_on -subsystem startd\n" * 20},
    {"type": "file", "path": "/etc/condor/config.d/50-worker.conf", "content": "CONDOR_HOST = {{ central_manager }}\n"},
]
CONTEXT = {"hostname": "worker-001", "central_manager": "cm.example.org"}


def test_result_holds_base64_and_sizes_but_no_bytes():
    result = user_data(PARTS, CONTEXT)
    assert set(result) == {"base64", "compressed", "sizes", "parts", "files"}
    json.dumps(result)
    sent = base64.b64decode(result["base64"])
    assert result["compressed"] and result["sizes"]["limit"] == 65535 and result["sizes"]["encoded"] == len(result["base64"])
    message = email.message_from_bytes(gzip.decompress(sent))
    assert [part.get_content_type() for part in message.walk()] == [
        "multipart/mixed", "text/cloud-config", "text/x-shellscript", "text/cloud-config"]
    assert [part["filename"] for part in result["parts"]] == ["part-01.cfg", "part-02.sh", "write-files.cfg"]
    assert result["files"] == [{"path": "/etc/condor/config.d/50-worker.conf", "bytes": len("CONDOR_HOST = cm.example.org\n")}]


def test_options_as_they_come_from_inventory_strings():
    result = user_data(PARTS, CONTEXT, limit="16384", limit_after_base64="no", compression="false")
    assert not result["compressed"] and result["sizes"]["gzip"] is None and result["sizes"]["limit"] == 16384
    assert base64.b64decode(result["base64"]).startswith(b"Content-Type: multipart/mixed")
    assert user_data(PARTS, CONTEXT, compression="yes")["compressed"] is True
    assert user_data(PARTS, CONTEXT, compression="AUTO", limit=0)["sizes"]["limit"] is None


def test_builder_errors_become_filter_errors_with_the_builders_message():
    with pytest.raises(AnsibleFilterError, match=r"user_data: parts\[0\] \(cloud-config 'part-01.cfg'\): undefined template variable: "
                                                 r"'hostname' is undefined"):
        user_data(PARTS, {})
    random.seed(4)
    noise = "".join(random.choice("abcdefghijklmnopqrstuvwxyz") for index in range(20000))
    with pytest.raises(AnsibleFilterError, match=r"user_data: user-data for this worker is \d+ bytes raw, before base64 encoding "
                                                 r"\(sent gzip\), over the limit of 16384 bytes"):
        user_data([{"type": "file", "path": "/opt/noise", "content": noise}], limit=16384, limit_after_base64=False)


@pytest.mark.parametrize("options, message", [
    ({"compression": "gzip"}, r"user_data: compression must be true, false or 'auto', got 'gzip'"),
    ({"limit_after_base64": "maybe"}, r"user_data: limit_after_base64 must be true or false, got 'maybe'"),
    ({"limit": -1}, r"user_data: limit must be a positive number of bytes"),
])
def test_bad_options(options, message):
    with pytest.raises(AnsibleFilterError, match=message):
        user_data(PARTS, CONTEXT, **options)


def test_registered_under_its_name():
    assert FilterModule().filters() == {"user_data": user_data}


def test_limits_and_compression_come_from_the_cloud_definition():
    big = [{"type": "shell", "content": "#!/bin/sh\n" + "".join("echo %d\n" % number for number in range(3000))}]
    plain_cloud = {"name": "arbutus", "type": "openstack", "user_data": {"compression": False},
                   "openstack": {"cloud": "arbutus"}}
    assert user_data(big, {}, cloud=plain_cloud)["compressed"] is False
    gzip_cloud = dict(plain_cloud, user_data={"compression": True})
    result = user_data(big, {}, cloud=gzip_cloud)
    assert result["compressed"] is True and result["sizes"]["limit"] == 65535
    ec2_like = dict(plain_cloud, user_data={"max_bytes": 16384, "limit_after_base64": False, "compression": False})
    with pytest.raises(AnsibleFilterError, match="16384"):
        user_data(big, {}, cloud=ec2_like)
    # an explicit argument wins over the cloud's setting
    assert user_data(big, {}, cloud=ec2_like, limit=200000)["sizes"]["limit"] == 200000


def test_a_bad_cloud_definition_is_named():
    with pytest.raises(AnsibleFilterError, match="clouds\\[0\\] \\(x\\): type openstack needs"):
        user_data(PARTS, CONTEXT, cloud={"name": "x", "type": "openstack"})
