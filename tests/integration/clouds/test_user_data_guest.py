"""Worker user-data from the user_data filter boots a real guest: gzip, MIME multipart, NoCloud.

The parts are files read with lookup('file'), the way the filter's docs say, rendered by the
filter with one worker's context in a real ansible-playbook run. The guest (the testbed's
Debian 13 image with cloud-init, under QEMU) gets the gzip bytes unchanged on its NoCloud seed
disk. Each part's effect is checked inside the guest, and cloud-init's own log must show it
handled each part.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import re
import subprocess
import sys
import uuid

import pytest
from hepinfra_testbed import guest

NAME = "ud-guest"

PARTS = {
    "base.yml": """#cloud-config
# the worker's identity
hostname: {{ hostname }}
write_files:
  - path: /var/tmp/hepinfra-cloud-config
    content: |
      group={{ group }}

      cloud={{ cloud }}
runcmd:
  - [sh, -c, "echo {{ hostname }} > /var/tmp/hepinfra-runcmd"]
""",
    "start.sh": """#!/bin/sh
# comments like this one are stripped
set -e

cat > /var/tmp/hepinfra-shell <<'EOF'
# kept: inside a heredoc
uuid={{ uuid }}
EOF
""",
    "boothook.sh": """#cloud-boothook
#!/bin/sh
echo "{{ uuid }}" > /run/hepinfra-boothook
""",
    "worker.conf": """CONDOR_HOST = {{ central_manager }}
# a comment that must stay: file contents are never changed

SEC_TOKEN_DIRECTORY = /etc/condor/tokens.d
""",
    "ucernvm.ini": """[ucernvm-begin]
# CernVM only
cvmfs_branch=cernvm-prod.cern.ch
[ucernvm-end]
""",
}


@pytest.fixture
def built(tmp_path, libvirt_daemon):
    """Run the filter in a playbook; return its result and the rendered context."""
    for filename, content in PARTS.items():
        (tmp_path / filename).write_text(content)
    context = {"hostname": "wn-" + uuid.uuid4().hex[:8], "uuid": str(uuid.uuid4()), "group": "atlas-8core",
               "cloud": "hv-test", "central_manager": "cm.example.org"}
    out = tmp_path / "user_data.json"

    def part(kind: str, source: str, **extra) -> dict:
        return dict({"type": kind, "content": "{{ lookup('ansible.builtin.file', '%s', rstrip=false) }}"
                     % (tmp_path / source)}, **extra)

    parts = [part("cloud-config", "base.yml"), part("shell", "start.sh", filename="start.sh"),
             part("boothook", "boothook.sh"), part("file", "worker.conf", path="/etc/hepinfra/worker.conf"),
             part("ucernvm", "ucernvm.ini")]
    play = [{"hosts": "localhost", "gather_facts": False, "vars": {"ctx": context, "parts": parts}, "tasks": [
        {"name": "build", "ansible.builtin.set_fact": {"ud": "{{ parts | hepinfra.cloud.user_data(ctx, compression=true) }}"}},
        {"name": "keep", "ansible.builtin.copy": {"content": "{{ ud | to_json }}", "dest": str(out)}},
    ]}]
    (tmp_path / "play.yml").write_text(json.dumps(play))
    proc = subprocess.run(["ansible-playbook", "-i", "localhost,", "-c", "local", str(tmp_path / "play.yml")],
                          capture_output=True, text=True, check=False,
                          env=dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_PYTHON_INTERPRETER=sys.executable))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(out.read_text()), context


@pytest.fixture
def booted(built):
    result, _context = built
    data = base64.b64decode(result["base64"])
    assert data[:2] == b"\x1f\x8b"  # gzip, as a cloud would pass it
    guest.guest_up(NAME, user_data=data, memory_mib=768, vcpus=2)
    try:
        guest.wait_agent(NAME, timeout=600)
        yield
    finally:
        guest.guest_down(NAME)


def sh(command: str) -> tuple[int, str]:
    code, out, err = guest.guest_exec(NAME, ["/bin/sh", "-c", command], timeout=600)
    return code, out + err


def test_gzip_multipart_user_data_runs_every_part_in_a_real_guest(built, booted):
    result, context = built
    assert result["compressed"] is True and result["sizes"]["gzip"] < result["sizes"]["plain"]
    plain = gzip.decompress(base64.b64decode(result["base64"]))
    assert b"comments like this one" not in plain and b"# the worker's identity" not in plain

    code, status = sh("cloud-init status --wait --long")
    # the CernVM part is for CernVM only: cloud-init on Debian skips it with a warning (status 2, degraded)
    assert code in (0, 2), status
    _code, log = sh("cat /var/log/cloud-init.log")
    assert "Unhandled unknown content-type (text/ucernvm)" in log

    # cloud-config: hostname, its write_files (blank line of the block scalar kept) and runcmd
    assert sh("hostname")[1].strip() == context["hostname"]
    assert sh("cat /var/tmp/hepinfra-cloud-config")[1] == f"group={context['group']}\n\ncloud={context['cloud']}\n"
    assert sh("cat /var/tmp/hepinfra-runcmd")[1].strip() == context["hostname"]
    # shell script: ran, heredoc body byte-exact
    assert sh("cat /var/tmp/hepinfra-shell")[1] == f"# kept: inside a heredoc\nuuid={context['uuid']}\n"
    # boothook: ran early, with the rendered UUID
    assert sh("cat /run/hepinfra-boothook")[1].strip() == context["uuid"]
    # file part: written byte-exact (comment and blank line kept), merged with the cloud-config's write_files
    assert sh("cat /etc/hepinfra/worker.conf")[1] == PARTS["worker.conf"].replace(
        "{{ central_manager }}", context["central_manager"])
    # cloud-init's own log shows it handed each part to its handler, by MIME type and file name
    mime = {"cloud-config": "text/cloud-config", "shell": "text/x-shellscript", "boothook": "text/cloud-boothook"}
    handled = [part for part in result["parts"] if part["type"] in mime or part["filename"] == "write-files.cfg"]
    assert len(handled) == 4
    for part in handled:
        ctype = mime.get(part["type"], "text/cloud-config")
        assert re.search(r"Calling handler \S+: \[.*\] \(%s, %s, \d\)" % (re.escape(ctype), re.escape(part["filename"])),
                         log), "cloud-init.log shows no handler for %s:\n%s" % (part, log[-6000:])
