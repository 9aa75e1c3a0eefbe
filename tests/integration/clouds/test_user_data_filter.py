"""Worker user-data from the user_data filter in a real ansible-playbook run: gzip, MIME multipart.

The parts are files read with lookup('file'), the way the filter's docs say, rendered by the
filter with one worker's context. What a guest makes of the same code's output (each part's
effect, cloud-init's handlers) is checked in a booted worker: tests/integration/workers/
test_worker_guest.py. Here: what the filter hands a cloud, decoded the way cloud-init does.
"""

from __future__ import annotations

import base64
import email
import gzip
import json
import os
import subprocess
import sys
import uuid

import pytest
import yaml

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
def built(tmp_path):
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


def test_gzip_multipart_user_data_carries_every_part_rendered(built):
    result, context = built
    assert result["compressed"] is True and result["sizes"]["gzip"] < result["sizes"]["plain"]
    data = base64.b64decode(result["base64"])
    assert data[:2] == b"\x1f\x8b"  # gzip, as a cloud passes it to cloud-init
    plain = gzip.decompress(data)
    assert b"comments like this one" not in plain and b"# the worker's identity" not in plain
    message = email.message_from_bytes(plain)
    assert message.get_content_type() == "multipart/mixed"
    parts = [(part.get_content_type(), part.get_filename(), part.get_payload(decode=True).decode())
             for part in message.walk() if not part.is_multipart()]
    types = [ctype for ctype, _name, _text in parts]
    assert types == ["text/cloud-config", "text/x-shellscript", "text/cloud-boothook", "text/ucernvm",
                     "text/cloud-config"], types
    by_type = {}
    for ctype, filename, text in parts:
        by_type.setdefault(ctype, []).append((filename, text))
    config = yaml.safe_load(by_type["text/cloud-config"][0][1])
    assert config["hostname"] == context["hostname"]
    assert config["write_files"][0]["content"] == f"group={context['group']}\n\ncloud={context['cloud']}\n"
    shell_name, shell = by_type["text/x-shellscript"][0]
    assert shell_name == "start.sh"
    assert f"# kept: inside a heredoc\nuuid={context['uuid']}\nEOF" in shell
    assert by_type["text/cloud-boothook"][0][1].startswith("#cloud-boothook\n")
    assert context["uuid"] in by_type["text/cloud-boothook"][0][1]
    assert "cvmfs_branch=cernvm-prod.cern.ch" in by_type["text/ucernvm"][0][1]
    # the file part: byte-exact (comment and blank line kept), appended to the write_files above
    files_name, files_text = by_type["text/cloud-config"][1]
    assert files_name == "write-files.cfg"
    written = yaml.safe_load(files_text)
    assert "append" in str(written["merge_how"])
    entry = written["write_files"][0]
    assert entry["path"] == "/etc/hepinfra/worker.conf"
    content = base64.b64decode(entry["content"]).decode() if entry.get("encoding") == "b64" else entry["content"]
    assert content == PARTS["worker.conf"].replace("{{ central_manager }}", context["central_manager"])
