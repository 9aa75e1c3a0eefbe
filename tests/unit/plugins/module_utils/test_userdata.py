# -*- coding: utf-8 -*-
# Copyright: hepinfra.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The worker user-data builder: what a worker receives, what cloud-init makes of it, what does not fit.

The multipart is read back with the standard library's email parser, which is what cloud-init
uses; cloud-init itself (22.4 from Debian 12) read the same output when this was written:
content types, gzip, utf-8 parts and the write_files merge came out as asserted here.
"""

from __future__ import annotations

import base64
import datetime
import email
import gzip
import json
import random

import pytest
import yaml

from ansible_collections.hepinfra.cloud.plugins.module_utils import _userdata
from ansible_collections.hepinfra.cloud.plugins.module_utils._userdata import (
    EC2_LIMIT, OPENSTACK_LIMIT, UserDataError, build_user_data, compact_cloud_config, strip_include, strip_ini, strip_shell,
)

CONTEXT = {"hostname": "worker-001", "uuid": "5f0c", "group": "atlas", "cloud": "cc-east", "central_manager": "cm.example.org",
           "token": "s3cr3t"}


def unpack(result):
    """The multipart bytes of a result, whatever the compression."""
    return gzip.decompress(result.data) if result.compressed else result.data


def leaves(result):
    """[(content type, filename, decoded text)] of the multipart, in order."""
    message = email.message_from_bytes(unpack(result))
    assert message.get_content_type() == "multipart/mixed"
    return [(part.get_content_type(), part.get_filename(), part.get_payload(decode=True).decode(part.get_content_charset()))
            for part in message.walk() if not part.is_multipart()]


def cloud_config_of(text):
    assert text.startswith("#cloud-config\n")
    return yaml.safe_load(text)


# -- the multipart ------------------------------------------------------------------------


def test_every_part_type_arrives_in_order_with_its_content_type_and_filename():
    parts = [
        {"type": "cloud-config", "content": "runcmd: [echo {{ hostname }}]\n"},
        {"type": "boothook", "content": "#cloud-boothook\n#!/bin/sh\necho early\n"},
        {"type": "shell", "content": "#!/bin/bash\necho {{ group }}\n", "filename": "10-condor.sh"},
        {"type": "ucernvm", "content": "[ucernvm-begin]\ncvmfs_branch=cernvm-prod.cern.ch\n[ucernvm-end]\n"},
        {"type": "amiconfig", "content": "[amiconfig]\nplugins=cernvm\n"},
        {"type": "include", "content": "#include\nhttps://config.example.org/{{ group }}.cfg\n"},
    ]
    result = build_user_data(parts, CONTEXT)
    assert [(ctype, filename) for ctype, filename, text in leaves(result)] == [
        ("text/cloud-config", "part-01.cfg"),
        ("text/cloud-boothook", "part-02.sh"),
        ("text/x-shellscript", "10-condor.sh"),
        ("text/ucernvm", "part-04.ucernvm"),
        ("text/amiconfig", "part-05.amiconfig"),
        ("text/x-include-url", "part-06.txt"),
    ]
    assert result.parts == [{"type": part["type"], "filename": filename, "bytes": len(text.encode())}
                            for part, (ctype, filename, text) in zip(parts, leaves(result))]
    texts = [text for ctype, filename, text in leaves(result)]
    assert texts[2] == "#!/bin/bash\necho atlas\n"
    assert texts[5] == "#include\nhttps://config.example.org/atlas.cfg\n"
    # cloud-init decides a message is MIME from this header in the first 4096 bytes
    assert b"MIME-Version: 1.0" in unpack(result)[:4096]


def test_the_same_input_gives_the_same_bytes_and_gzip_holds_the_same_multipart():
    parts = [{"type": "shell", "content": "#!/bin/sh\n" + "echo {{ hostname }} line\n" * 50}]
    first = build_user_data(parts, CONTEXT, compression=True)
    again = build_user_data(parts, CONTEXT, compression=True)
    plain = build_user_data(parts, CONTEXT, compression=False)
    assert first.data == again.data and first.data[:2] == b"\x1f\x8b"
    assert gzip.decompress(first.data) == plain.data
    assert base64.b64decode(first.base64) == first.data
    assert first.sizes == {"plain": len(plain.data), "gzip": len(first.data), "final": len(first.data),
                           "encoded": len(first.base64), "limit": None}


def test_non_ascii_content_and_from_lines_come_back_unchanged():
    script = "#!/bin/sh\necho 'Grüße aus Zürich – ✓'\nFrom the start of a line\n"
    result = build_user_data([{"type": "shell", "content": script, "template": False}], compression=False)
    assert leaves(result)[0][2] == script


# -- templates ----------------------------------------------------------------------------


def test_each_worker_gets_its_own_rendering():
    parts = [{"type": "shell", "content": "#!/bin/sh\necho {{ hostname }} {{ uuid }} > /etc/worker\n"}]
    one = build_user_data(parts, dict(CONTEXT, hostname="worker-001", uuid="a"))
    two = build_user_data(parts, dict(CONTEXT, hostname="worker-002", uuid="b"))
    assert leaves(one)[0][2] == "#!/bin/sh\necho worker-001 a > /etc/worker\n"
    assert leaves(two)[0][2] == "#!/bin/sh\necho worker-002 b > /etc/worker\n"
    assert one.base64 != two.base64


def test_an_undefined_variable_names_the_variable_and_the_part():
    parts = [{"type": "cloud-config", "content": "hostname: {{ hostname }}\n"},
             {"type": "shell", "content": "#!/bin/sh\ncondor_token_fetch {{ tokn }}\n", "filename": "token.sh"}]
    with pytest.raises(UserDataError, match=r"parts\[1\] \(shell 'token.sh'\): undefined template variable: 'tokn' is undefined"):
        build_user_data(parts, CONTEXT)


def test_template_false_keeps_jinja_syntax_and_template_syntax_errors_are_reported():
    parts = [{"type": "shell", "content": "#!/bin/sh\necho '{{ not a template }}'\n", "template": False}]
    assert leaves(build_user_data(parts))[0][2] == "#!/bin/sh\necho '{{ not a template }}'\n"
    with pytest.raises(UserDataError, match=r"parts\[0\] \(shell 'part-01.sh'\): template syntax error on line 2"):
        build_user_data([{"type": "shell", "content": "#!/bin/sh\necho {{ hostname }\n"}], CONTEXT)


def test_templates_run_in_a_sandbox():
    parts = [{"type": "shell", "content": "#!/bin/sh\necho {{ ''.__class__.__mro__[1].__subclasses__() }}\n"}]
    with pytest.raises(UserDataError, match=r"parts\[0\] \(shell 'part-01.sh'\): the template does something the sandbox forbids"):
        build_user_data(parts, CONTEXT)


def test_block_tags_leave_no_empty_lines_in_files_as_with_ansible_template():
    content = "{% for host in ['a', 'b'] %}\nallow {{ host }}\n{% endfor %}\n"
    result = build_user_data([{"type": "file", "path": "/etc/allow", "content": content}])
    entry = cloud_config_of(leaves(result)[0][2])["write_files"][0]
    assert base64.b64decode(entry["content"]).decode() == "allow a\nallow b\n"


def test_content_without_template_markers_needs_no_jinja(monkeypatch):
    monkeypatch.setattr(_userdata, "_jinja_environment", lambda: None)
    result = build_user_data([{"type": "shell", "content": "#!/bin/sh\necho plain\n"}])
    assert leaves(result)[0][2] == "#!/bin/sh\necho plain\n"
    with pytest.raises(UserDataError, match=r"parts\[0\] \(shell 'part-01.sh'\): the content is a Jinja template but jinja2 is not installed"):
        build_user_data([{"type": "shell", "content": "#!/bin/sh\necho {{ hostname }}\n"}], CONTEXT)


# -- stripping ----------------------------------------------------------------------------


SCRIPT = """#!/bin/bash
# Start HTCondor on the worker

set -euo pipefail
    # an indented comment
cat > /etc/condor/config.d/10-worker.conf <<'EOF'
# this comment is part of the file

CONDOR_HOST = {{ central_manager }}
EOF
cat <<-"END" | tee /tmp/notes
\t# tab-indented, kept

\tEND
python3 -c "
# a python comment inside a double-quoted argument

print('kept')
"
condor_status \\
# after a continuation this line ends the command: kept
echo "it's done" # an inline comment with a quote
systemctl start condor
"""


def test_shell_loses_comments_and_blank_lines_but_keeps_shebang_heredocs_strings_and_continuations():
    stripped = strip_shell(SCRIPT)
    assert stripped == "\n".join([
        "#!/bin/bash",
        "set -euo pipefail",
        "cat > /etc/condor/config.d/10-worker.conf <<'EOF'",
        "# this comment is part of the file",
        "",
        "CONDOR_HOST = {{ central_manager }}",
        "EOF",
        "cat <<-\"END\" | tee /tmp/notes",
        "\t# tab-indented, kept",
        "",
        "\tEND",
        "python3 -c \"",
        "# a python comment inside a double-quoted argument",
        "",
        "print('kept')",
        "\"",
        "condor_status \\",
        "# after a continuation this line ends the command: kept",
        "echo \"it's done\" # an inline comment with a quote",
        "systemctl start condor",
    ]) + "\n"


def test_heredoc_bodies_are_byte_exact_in_the_sent_script():
    body = "  # indented comment\n\n\t\ttabs and trailing spaces   \n#!/not/a/shebang\n\n"
    script = "#!/bin/sh\n\n# comment\ncat > /etc/motd <<MOTD\n" + body + "MOTD\n# after\necho done\n"
    sent = leaves(build_user_data([{"type": "shell", "content": script, "template": False}]))[0][2]
    assert sent == "#!/bin/sh\ncat > /etc/motd <<MOTD\n" + body + "MOTD\necho done\n"


def test_several_heredocs_on_one_line_and_here_strings():
    script = "#!/bin/sh\npaste /dev/fd/3 3<<A - <<B\n# a\nA\n\n# b\nB\n# gone\ncat <<< '# here-string'\n# gone too\n"
    assert strip_shell(script) == "#!/bin/sh\npaste /dev/fd/3 3<<A - <<B\n# a\nA\n\n# b\nB\ncat <<< '# here-string'\n"


def test_leading_blank_lines_before_the_shebang_go_and_a_script_without_one_is_refused():
    assert strip_shell("\n\n#!/bin/sh\necho x\n") == "#!/bin/sh\necho x\n"
    with pytest.raises(UserDataError, match=r"parts\[0\] \(shell 'part-01.sh'\): a shell part must start with an interpreter line"):
        build_user_data([{"type": "shell", "content": "# setup\necho x\n"}])
    with pytest.raises(UserDataError, match=r"must start with an interpreter line"):
        build_user_data([{"type": "shell", "content": "\n#!/bin/sh\necho x\n", "strip": False}])


def test_boothook_keeps_its_header_and_shebang():
    text = "#cloud-boothook\n\n#!/bin/sh\n# comment\necho early\n"
    assert strip_shell(text, boothook=True) == "#cloud-boothook\n#!/bin/sh\necho early\n"
    result = build_user_data([{"type": "boothook", "content": text}])
    assert leaves(result)[0][2] == "#cloud-boothook\n#!/bin/sh\necho early\n"


def test_strip_false_sends_the_content_as_rendered():
    script = "#!/bin/sh\n\n# keep me\necho {{ hostname }}\n"
    result = build_user_data([{"type": "shell", "content": script, "strip": False}], CONTEXT)
    assert leaves(result)[0][2] == "#!/bin/sh\n\n# keep me\necho worker-001\n"


def test_cloud_config_is_compact_and_keeps_block_scalar_scripts_exactly():
    cloud_config = """#cloud-config
# Worker base configuration

packages:
  - condor   # HTCondor

write_files:
  - path: /usr/local/bin/drain
    permissions: '0755'
    content: |
      #!/bin/bash

      # drain the startd before shutdown
      condor_drain -graceful {{ hostname }}
runcmd:
  - [systemctl, enable, --now, condor]
"""
    result = build_user_data([{"type": "cloud-config", "content": cloud_config}], CONTEXT)
    sent = leaves(result)[0][2]
    assert sent.count("\n") == 2 and "# Worker" not in sent and "# HTCondor" not in sent
    data = cloud_config_of(sent)
    assert data["write_files"][0]["content"] == "#!/bin/bash\n\n# drain the startd before shutdown\ncondor_drain -graceful worker-001\n"
    assert data == yaml.safe_load(cloud_config.replace("{{ hostname }}", "worker-001"))
    assert data["write_files"][0]["permissions"] == "0755"


def test_compact_cloud_config_reads_back_as_the_same_data():
    data = {
        "strings": ["yes", "no", "on", "~", "null", "0644", "1e3", "- x", "a: b", "#c", "{d}", "'q'", '"qq"', "back\\slash", ""],
        "unicode": ["é", "✓", "😀", "line\u2028sep", "nel\x85", "del\x7f", "bom\ufeff", "tab\tnew\nline\r"],
        "numbers": [0, -1, 10 ** 20, 1.5, -0.25, 1e16, 1e-7, 2.5e300, float("inf"), float("-inf")],
        "other": [True, False, None, {}, [], datetime.date(2024, 5, 1), datetime.datetime(2024, 5, 1, 12, 30, 0)],
        "nested": {"a": {"b": [{"c": "d"}]}},
        7: "int key", None: "null key",
    }
    text = compact_cloud_config(data)
    assert text.startswith("#cloud-config\n{") and text.count("\n") == 2
    assert yaml.safe_load(text) == data
    nan = yaml.safe_load(compact_cloud_config({"x": float("nan")}))["x"]
    assert nan != nan  # pylint: disable=comparison-with-itself


def test_compact_cloud_config_refuses_what_it_cannot_carry():
    with pytest.raises(UserDataError, match=r"parts\[0\] \(cloud-config 'part-01.cfg'\): the cloud-config holds a bytes.*strip: false"):
        build_user_data([{"type": "cloud-config", "content": "blob: !!binary aGVsbG8=\n"}])
    result = build_user_data([{"type": "cloud-config", "content": "blob: !!binary aGVsbG8=\n", "strip": False}])
    assert leaves(result)[0][2] == "blob: !!binary aGVsbG8=\n"


def test_ini_sections_and_include_lists():
    assert strip_ini("[ucernvm-begin]\n# comment\n\n; also a comment\ncvmfs_branch=x\n  # indented\n[ucernvm-end]\n") == (
        "[ucernvm-begin]\ncvmfs_branch=x\n[ucernvm-end]\n")
    assert strip_include("#include-once\n# comment\n\nhttps://a.example/x\n#include\nhttps://b.example/y\n") == (
        "#include-once\nhttps://a.example/x\n#include\nhttps://b.example/y\n")


# -- files --------------------------------------------------------------------------------


def test_file_parts_land_in_one_write_files_part_that_appends_to_the_users_write_files():
    condor = "# HTCondor worker\n\nCONDOR_HOST = {{ central_manager }}\nSTART = True\n"
    parts = [
        {"type": "cloud-config", "content": "write_files:\n  - path: /etc/motd\n    content: hello\n"},
        {"type": "file", "path": "/etc/condor/config.d/50-worker.conf", "content": condor},
        {"type": "shell", "content": "#!/bin/sh\ncondor_reconfig\n"},
        {"type": "file", "path": "/etc/condor/tokens.d/worker", "content": "{{ token }}", "permissions": "0600",
         "owner": "condor:condor", "defer": True},
        {"type": "file", "path": "/etc/raw.j2", "content": "{{ kept }}\n", "template": False},
    ]
    result = build_user_data(parts, CONTEXT)
    sent = leaves(result)
    assert [(ctype, filename) for ctype, filename, text in sent] == [
        ("text/cloud-config", "part-01.cfg"), ("text/x-shellscript", "part-03.sh"), ("text/cloud-config", "write-files.cfg")]
    generated = cloud_config_of(sent[2][2])
    assert generated["merge_how"] == [{"name": "list", "settings": ["append"]},
                                      {"name": "dict", "settings": ["no_replace", "recurse_list"]}]
    entries = generated["write_files"]
    assert [entry["path"] for entry in entries] == ["/etc/condor/config.d/50-worker.conf", "/etc/condor/tokens.d/worker", "/etc/raw.j2"]
    assert {entry["encoding"] for entry in entries} == {"b64"}
    assert base64.b64decode(entries[0]["content"]).decode() == "# HTCondor worker\n\nCONDOR_HOST = cm.example.org\nSTART = True\n"
    assert (entries[0]["permissions"], entries[0]["owner"], "defer" in entries[0]) == ("0644", "root:root", False)
    assert base64.b64decode(entries[1]["content"]) == b"s3cr3t"
    assert (entries[1]["permissions"], entries[1]["owner"], entries[1]["defer"]) == ("0600", "condor:condor", True)
    assert base64.b64decode(entries[2]["content"]) == b"{{ kept }}\n"
    rendered_condor = len(condor.replace("{{ central_manager }}", "cm.example.org"))
    assert result.files == [{"path": "/etc/condor/config.d/50-worker.conf", "bytes": rendered_condor},
                            {"path": "/etc/condor/tokens.d/worker", "bytes": 6}, {"path": "/etc/raw.j2", "bytes": 11}]


def test_file_content_is_byte_exact():
    content = "\ufeffBOM, CRLF\r\n\n# comment\n\ttab \n\x00nul"
    result = build_user_data([{"type": "file", "path": "/etc/exact", "content": content, "template": False}])
    entry = cloud_config_of(leaves(result)[0][2])["write_files"][0]
    assert base64.b64decode(entry["content"]) == content.encode("utf-8")


# -- compression and limits ---------------------------------------------------------------


def test_auto_compression_picks_the_smaller_payload(monkeypatch):
    repetitive = [{"type": "shell", "content": "#!/bin/sh\n" + "echo the same line again\n" * 200}]
    big = build_user_data(repetitive)
    assert big.compressed and big.sizes["gzip"] < big.sizes["plain"] and big.sizes["final"] == big.sizes["gzip"]
    assert big.data == gzip.compress(build_user_data(repetitive, compression=False).data, mtime=0, compresslevel=9)
    # Text user-data practically always shrinks; a gzip that grows it must not be chosen.
    monkeypatch.setattr(_userdata, "_gzip", lambda data: gzip.compress(data) + bytes(len(data)))
    grown = build_user_data(repetitive)
    assert not grown.compressed and grown.sizes["gzip"] > grown.sizes["plain"] == grown.sizes["final"]
    assert grown.data.startswith(b"Content-Type: multipart/mixed")


def test_compression_false_never_gzips_and_true_always_does():
    parts = [{"type": "shell", "content": "#!/bin/sh\n" + "echo again\n" * 100}]
    never = build_user_data(parts, compression=False)
    assert not never.compressed and never.sizes["gzip"] is None and never.data.startswith(b"Content-Type: multipart/mixed")
    tiny = [{"type": "shell", "content": "#!/bin/sh\nid\n"}]
    always = build_user_data(tiny, compression=True)
    assert always.compressed and always.data[:2] == b"\x1f\x8b"


def test_over_the_limit_raises_with_all_sizes_and_the_largest_parts():
    random.seed(2)
    noise = "".join(random.choice("abcdefghijklmnopqrstuvwxyz") for index in range(100000))
    parts = [{"type": "cloud-config", "content": "hostname: {{ hostname }}\n"},
             {"type": "file", "path": "/opt/payload", "content": noise, "template": False},
             {"type": "shell", "content": "#!/bin/sh\necho hello\n", "filename": "hello.sh"}]
    with pytest.raises(UserDataError) as caught:
        build_user_data(parts, CONTEXT, limit=OPENSTACK_LIMIT)
    message = str(caught.value)
    plain = build_user_data(parts, CONTEXT, compression=False)
    packed = build_user_data(parts, CONTEXT, compression=True)
    assert "after base64 encoding (sent gzip), over the limit of 65535 bytes" in message
    assert "plain multipart %d bytes (%d after base64)" % (plain.sizes["plain"], plain.sizes["encoded"]) in message
    assert "gzip %d bytes (%d after base64)" % (packed.sizes["gzip"], packed.sizes["encoded"]) in message
    assert message.index("parts[1] (file '/opt/payload') 100000 bytes") < message.index("parts[0] (cloud-config 'part-01.cfg')")
    assert "s3cr3t" not in message


def test_the_limit_counts_base64_for_openstack_and_raw_bytes_for_ec2():
    random.seed(3)
    noise = "".join(random.choice("0123456789abcdef") for index in range(30000))
    parts = [{"type": "file", "path": "/opt/blob", "content": noise, "template": False}]
    result = build_user_data(parts, compression=False)
    raw, encoded = result.sizes["final"], result.sizes["encoded"]
    assert encoded == len(result.base64) == 4 * ((raw + 2) // 3)
    build_user_data(parts, compression=False, limit=encoded, limit_after_base64=True)
    with pytest.raises(UserDataError, match=r"%d bytes after base64 encoding \(sent plain\), over the limit of %d bytes" % (encoded, encoded - 1)):
        build_user_data(parts, compression=False, limit=encoded - 1, limit_after_base64=True)
    build_user_data(parts, compression=False, limit=raw, limit_after_base64=False)
    with pytest.raises(UserDataError, match=r"raw, before base64 encoding \(sent plain\), over the limit of %d bytes" % (raw - 1)):
        build_user_data(parts, compression=False, limit=raw - 1, limit_after_base64=False)
    assert build_user_data(parts, compression=False, limit=raw, limit_after_base64=False).sizes["limit"] == raw


def test_with_compression_off_the_message_says_when_gzip_would_fit():
    parts = [{"type": "shell", "content": "#!/bin/sh\n" + "echo the same line again\n" * 1000}]
    with pytest.raises(UserDataError, match="gzip would fit") as caught:
        build_user_data(parts, compression=False, limit=EC2_LIMIT, limit_after_base64=False)
    assert "not used because compression is off" in str(caught.value)


# -- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize("parts, message", [
    ("#!/bin/sh", r"parts must be a list of dicts, got str"),
    ([], r"the list is empty"),
    (["#!/bin/sh"], r"parts\[0\]: each part must be a dict"),
    ([{"type": "script", "content": "x"}],
     r"parts\[0\]: type must be one of cloud-config, shell, boothook, ucernvm, amiconfig, include, file, got 'script'"),
    ([{"type": "shell"}], r"parts\[0\] \(shell\): content is missing"),
    ([{"type": "shell", "content": 42}], r"parts\[0\] \(shell\): content must be a string, got int"),
    ([{"type": "shell", "content": "#!/bin/sh\n", "templte": False}],
     r"parts\[0\] \(shell\): unknown field templte; a shell part takes content, filename, strip, template, type"),
    ([{"type": "shell", "content": "#!/bin/sh\n", "strip": "no"}],
     r"parts\[0\] \(shell\): strip must be true or false, got 'no'"),
    ([{"type": "shell", "content": "#!/bin/sh\n", "filename": "../x"}],
     r"parts\[0\] \(shell\): filename must be a plain file name"),
    ([{"type": "shell", "content": "#!/bin/sh\n", "filename": "a.sh"}, {"type": "shell", "content": "#!/bin/sh\n", "filename": "a.sh"}],
     r"parts\[1\] \(shell 'a.sh'\): filename 'a.sh' is already used by parts\[0\] \(shell 'a.sh'\)"),
    ([{"type": "shell", "content": "#!/bin/sh\n", "filename": "write-files.cfg"}],
     r"already used by the generated write_files part"),
    ([{"type": "file", "content": "x"}],
     r"parts\[0\] \(file\): path must be the absolute path of the file on the worker, got None"),
    ([{"type": "file", "content": "x", "path": "etc/x"}],
     r"parts\[0\] \(file\): path must be the absolute path.*got 'etc/x'"),
    ([{"type": "file", "content": "x", "path": "/etc/x", "permissions": 420}],
     r"permissions must be a quoted octal string like '0644', got the number 420"),
    ([{"type": "file", "content": "x", "path": "/etc/x", "permissions": "rw-r--r--"}],
     r"permissions must be an octal string"),
    ([{"type": "file", "content": "x", "path": "/etc/x", "owner": "root root"}],
     r"owner must be 'user' or 'user:group'"),
    ([{"type": "file", "content": "x", "path": "/etc/x", "filename": "x"}],
     r"parts\[0\] \(file\): unknown field filename"),
    ([{"type": "file", "content": "x", "path": "/etc/x"}, {"type": "file", "content": "y", "path": "/etc/x"}],
     r"parts\[1\] \(file '/etc/x'\): path /etc/x is also written by parts\[0\]"),
    ([{"type": "cloud-config", "content": "- a\n- b\n"}],
     r"parts\[0\] \(cloud-config 'part-01.cfg'\): the rendered cloud-config must be a YAML mapping \(key: value\), got list"),
    ([{"type": "cloud-config", "content": "# only a comment\n"}],
     r"must be a YAML mapping \(key: value\), got nothing"),
    ([{"type": "cloud-config", "content": "a: [b\n"}],
     r"parts\[0\] \(cloud-config 'part-01.cfg'\): the rendered cloud-config is not valid YAML on line 2, column 1"),
    ([{"type": "include", "content": "# nothing\n\n"}],
     r"parts\[0\] \(include 'part-01.txt'\): the content is empty after rendering and stripping"),
])
def test_bad_input_gives_a_message_naming_part_and_field(parts, message):
    with pytest.raises(UserDataError, match=message):
        build_user_data(parts)


def test_a_yaml_error_does_not_show_the_rendered_line():
    with pytest.raises(UserDataError) as caught:
        build_user_data([{"type": "cloud-config", "content": "token: {{ token }}\n  bad: [\n"}], CONTEXT)
    assert "s3cr3t" not in str(caught.value) and "line 2" in str(caught.value)


@pytest.mark.parametrize("options, message", [
    ({"compression": "gzip"}, r"compression must be true, false or 'auto', got 'gzip'"),
    ({"compression": 1}, r"compression must be"),
    ({"limit": 0}, r"limit must be a positive number of bytes or null for none, got 0"),
    ({"limit": "65535"}, r"limit must be a positive number"),
    ({"limit_after_base64": "yes"}, r"limit_after_base64 must be true or false"),
])
def test_bad_options(options, message):
    with pytest.raises(UserDataError, match=message):
        build_user_data([{"type": "shell", "content": "#!/bin/sh\n"}], **options)


def test_context_must_be_a_mapping():
    with pytest.raises(UserDataError, match="context must be a dict of template variables, got list"):
        build_user_data([{"type": "shell", "content": "#!/bin/sh\necho {{ x }}\n"}], ["x"])


def test_result_as_plain_data_has_no_bytes_unless_asked():
    result = build_user_data([{"type": "shell", "content": "#!/bin/sh\nid\n"}], limit=EC2_LIMIT, limit_after_base64=False)
    plain = result.to_dict()
    assert set(plain) == {"base64", "compressed", "sizes", "parts", "files"}
    json.dumps(plain)
    assert result.to_dict(include_data=True)["data"] == result.data
