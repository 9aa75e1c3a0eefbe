"""A real worker: the worker module boots one from the image of playbooks/worker_image.yml (Debian 13
with HTCondor) on a libvirt cloud, it joins the real pool that the htcondor role deployed, runs a
job, and is retired only once the job is done.

One guest under TCG: several minutes. The pool is hepinfra_testbed.pool (central manager and
submit host in a test host, reached by guests on the pool's own libvirt network).

The same guest proves the user-data a worker gets (the user_data filter's code): every kind of
part (cloud-config, shell script, boothook, file, CernVM) is checked inside the guest, through
the guest agent, and cloud-init's own log must show it handled each part.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import re
import time
from email import message_from_bytes
from pathlib import Path

import libvirt
import libvirt_qemu
import pycdlib
import pytest
from hepinfra_testbed import guest, podman
from hepinfra_testbed.common import wait_for

GROUP = "g2"

# The user's parts, rendered by the module with the worker's context ({% raw %}: Ansible itself
# must not template them on the way in).
PARTS = {
    "cloud-config": """#cloud-config
# the worker's own record
write_files:
  - path: /var/tmp/hepinfra-cloud-config
    content: |
      group={{ group }}

      cloud={{ cloud }}
runcmd:
  - [sh, -c, "echo {{ hostname }} > /var/tmp/hepinfra-runcmd"]
""",
    "shell": """#!/bin/sh
# comments like this one are stripped
set -e

cat > /var/tmp/hepinfra-shell <<'END'
# kept: inside a heredoc
uuid={{ uuid }}
END
systemctl restart condor
""",
    "boothook": """#cloud-boothook
#!/bin/sh
echo "{{ uuid }}" > /run/hepinfra-boothook
""",
    "ucernvm": """[ucernvm-begin]
# CernVM only
cvmfs_branch=cernvm-prod.cern.ch
[ucernvm-end]
""",
}


def raw(text: str) -> str:
    return "{% raw %}" + text + "{% endraw %}"


def in_guest(conn, name: str, command: str, timeout: float = 600) -> tuple[int, str]:
    """Run a shell command in a worker through its guest agent channel; (exit code, output)."""
    dom = conn.lookupByName(name)

    def agent(execute: str, arguments: dict):
        reply = libvirt_qemu.qemuAgentCommand(dom, json.dumps({"execute": execute, "arguments": arguments}), 30, 0)
        return json.loads(reply)["return"]

    def started():
        try:
            return agent("guest-exec", {"path": "/bin/sh", "arg": ["-c", command], "capture-output": True})
        except libvirt.libvirtError:  # the agent is not up yet
            return None

    pid = wait_for(started, timeout=300, interval=3, what=f"the guest agent of {name}")["pid"]

    def finished():
        status = agent("guest-exec-status", {"pid": pid})
        return status if status.get("exited") else None

    status = wait_for(finished, timeout=timeout, interval=1, what=command)
    text = "".join(base64.b64decode(status.get(key, "")).decode(errors="replace") for key in ("out-data", "err-data"))
    return status.get("exitcode", -1), text


def seed_token(pool_path: Path, name: str) -> str:
    """The token inside a worker's NoCloud seed (the only place it travels)."""
    iso = pycdlib.PyCdlib()
    iso.open(str(pool_path / f"{name}-seed.iso"))
    out = io.BytesIO()
    iso.get_file_from_iso_fp(out, rr_path="/user-data")
    iso.close()
    data = out.getvalue()
    message = message_from_bytes(gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data)
    for part in message.walk():
        text = part.get_payload(decode=True).decode() if not part.is_multipart() else ""
        if "/etc/condor/tokens.d/hepinfra-worker" in text:
            config = json.loads(text.split("\n", 1)[1])
            for entry in config["write_files"]:
                if entry["path"] == "/etc/condor/tokens.d/hepinfra-worker":
                    return base64.b64decode(entry["content"]).decode().strip()
    raise AssertionError("no token in the seed")


def test_real_worker_joins_runs_a_job_and_is_retired_after_it(htcondor_pool, boot_files, libvirt_cloud_factory,
                                                              run_module, tmp_path):
    # pylint: disable=too-many-locals,too-many-statements
    disk, kernel, initrd, where = boot_files
    cloud, path = libvirt_cloud_factory(disk, flavors={"w1.guest": {"vcpus": 2, "memory_mb": 1024}},
                                        network=htcondor_pool.network, console_log=str(where),
                                        boot={"kernel": str(kernel), "initrd": str(initrd),
                                              "cmdline": "root=/dev/vda rw console=ttyS0 quiet"})
    env = {"CONTAINERS_CONF": str(podman.containers_conf())}
    audit = tmp_path / "audit.jsonl"
    worker_args = {
        "clouds": [cloud], "group": GROUP, "config": "guest",
        "placements": [{"cloud": "lv", "count": 1, "flavor": "w1.guest", "image": "wimg"}],
        "user_data": [
            {"type": "cloud-config", "content": raw(PARTS["cloud-config"])},
            {"type": "boothook", "content": raw(PARTS["boothook"])},
            {"type": "file", "path": "/etc/condor/config.d/50-hepinfra.conf", "content": raw("{{ condor_config }}")},
            {"type": "shell", "filename": "start.sh", "content": raw(PARTS["shell"])},
            {"type": "ucernvm", "content": PARTS["ucernvm"], "template": False},
        ],
        "user_data_context": {"condor_config": htcondor_pool.execute_config},
        "condor": {"trust_domain": htcondor_pool.trust_domain, "central_manager": htcondor_pool.central_manager,
                   "command_prefix": ["podman", "exec", htcondor_pool.container], "token_lifetime": 7200},
        "max_lifetime": 86400, "audit_log": str(audit), "drain_wait": 60,
    }
    outputs = []
    # A reused pool may hold jobs of earlier runs: start from an empty queue.
    htcondor_pool.run(["condor_rm", "-all"], user=htcondor_pool.submit_user, check=False)

    def worker(count, **extra):
        outcome = run_module("hepinfra.cloud.worker", {**worker_args, **extra,
                                                       "placements": [{**worker_args["placements"][0], "count": count}]},
                             env=env, verbosity=3)
        outputs.append(outcome.output + json.dumps(outcome.result))
        if outcome.rc != 0 or outcome.failed:
            consoles = "".join("\n--- %s (last 6000 characters)\n%s" % (log.name, log.read_text(errors="replace")[-6000:])
                               for log in sorted(where.glob("*.console.log")))
            pytest.fail("%s\n%s%s" % (outcome.msg, outcome.output[-3000:], consoles), pytrace=False)
        return outcome.result

    started = time.monotonic()
    up = worker(1, wait="registered", wait_timeout=900)
    name = up["clouds"]["lv"]["launched"][0]
    # The cloud's console_log setting: virtlogd records the worker's serial console.
    console = (where / f"{name}.console.log").read_text(errors="replace")
    assert "Cloud-init v." in console and f"{name} login:" in console, console[-2000:]
    worker_uuid = name.split("--")[2]
    print(f"worker registered {time.monotonic() - started:.0f} s after the launch")

    slots = htcondor_pool.status("-constraint", f'HepinfraWorkerUuid == "{worker_uuid}"')
    assert slots, "the worker's startd is not in the collector"
    ad = slots[0]
    assert (ad["HepinfraGroup"], ad["HepinfraCloud"], ad["HepinfraFlavor"], ad["HepinfraConfig"]) == \
        (GROUP, "lv", "w1.guest", "guest")
    assert ad["Machine"].split(".")[0] == name
    assert ad["AuthenticatedIdentity"] == f"worker-{worker_uuid}@{htcondor_pool.trust_domain}"

    conn = libvirt.open(guest.URI)
    check_user_data(conn, name, worker_uuid, htcondor_pool.execute_config)

    info = run_module("hepinfra.cloud.worker_info", {"clouds": [cloud], "group": GROUP,
                                                     "condor": {"command_prefix": worker_args["condor"]["command_prefix"]}},
                      env=env)
    assert [(w["name"], w["pool_state"]) for w in info.result["workers"]] == [(name, "idle")]

    # A job that runs until the test lets it end keeps the worker busy: lowering the count drains
    # the worker but does not delete it.
    cluster = htcondor_pool.submit(
        "executable = /usr/bin/timeout\ntransfer_executable = false\n"
        "arguments = \"600 /bin/sh -c 'until [ -e /run/hepinfra-release ]; do sleep 1; done'\"\n"
        f'requirements = HepinfraGroup == "{GROUP}"\nrequest_cpus = 1\nrequest_memory = 64\nqueue\n')
    wait_for(lambda: any(s.get("State") == "Claimed" for s in htcondor_pool.status(
        "-constraint", f'HepinfraWorkerUuid == "{worker_uuid}"')), timeout=300, interval=3, what="the job to start")
    down = worker(0, drain_wait=5)
    assert down["clouds"]["lv"]["drained"] == [name] and down["clouds"]["lv"]["deleted"] == []
    assert conn.lookupByName(name).isActive()
    again = worker(0, drain_wait=0)
    assert again["clouds"]["lv"]["deleted"] == [] and conn.lookupByName(name).isActive()
    assert in_guest(conn, name, "touch /run/hepinfra-release")[0] == 0

    # Once the job is done the next run deletes the worker, its disks and its seed.
    wait_for(lambda: not htcondor_pool.run(["condor_q", "-af", "ClusterId", str(cluster)],
                                           user=htcondor_pool.submit_user).stdout.strip(),
             timeout=300, interval=5, what="the job to finish")
    history = htcondor_pool.run(["condor_history", "-af", "ExitCode", "LastRemoteHost", str(cluster)],
                                user=htcondor_pool.submit_user).stdout.split()
    assert history[0] == "0" and name in history[1]
    token = seed_token(path, name)
    # The collector learns of the freed slot with the startd's next update (a few seconds).
    wait_for(lambda: not [s for s in htcondor_pool.status("-constraint", f'HepinfraWorkerUuid == "{worker_uuid}"')
                          if s.get("State") != "Drained" or s.get("Activity") != "Idle"],
             timeout=120, interval=3, what="the worker's slots to show it drained")
    last = worker(0)
    assert last["clouds"]["lv"]["deleted"] == [name]
    assert name not in [d.name() for d in conn.listAllDomains(0)]
    conn.close()
    assert not [v for v in path.iterdir() if v.name.startswith(name)]

    # The token reached the worker only through its user-data: never a result, an output line or the audit log.
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [r["event"] for r in records] == ["launch", "drain", "delete"]
    assert records[0]["token_identity"] == f"worker-{worker_uuid}@{htcondor_pool.trust_domain}"
    assert records[0]["token_expires"]
    assert len(token) > 100
    for text in outputs + [audit.read_text()]:
        assert token not in text and token.split(".")[2] not in text


def test_workers_that_never_register_are_deleted_first(htcondor_pool, libvirt_cloud, run_module, tmp_path):
    """Domains that never boot cannot join the pool: past registration_timeout they go, whatever the count.

    Tokens are minted for real on the pool's central manager (one per worker)."""
    cloud, path = libvirt_cloud
    env = {"CONTAINERS_CONF": str(podman.containers_conf())}
    task = {"clouds": [cloud], "group": GROUP, "config": "never",
            "placements": [{"cloud": "lv", "count": 2, "flavor": "w1.tiny", "image": "wimg"}],
            "condor": {"trust_domain": htcondor_pool.trust_domain,
                       "command_prefix": ["podman", "exec", htcondor_pool.container], "token_lifetime": 600},
            "audit_log": str(tmp_path / "audit.jsonl"), "registration_timeout": 3600}
    up = run_module("hepinfra.cloud.worker", task, env=env)
    assert up.rc == 0 and not up.failed, up.msg
    launched = up.result["clouds"]["lv"]["launched"]
    tokens = [seed_token(path, name) for name in launched]
    assert len(set(tokens)) == 2                                     # one token per worker
    for name, token in zip(launched, tokens):
        payload = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
        assert payload["sub"] == f"worker-{name.split('--')[2]}@{htcondor_pool.trust_domain}"
        assert sorted(payload["scope"].split()) == ["condor:/ADVERTISE_MASTER", "condor:/ADVERTISE_STARTD",
                                                    "condor:/READ"]
        assert payload["exp"] - payload["iat"] == 600
    waiting = run_module("hepinfra.cloud.worker", task, env=env)
    assert waiting.rc == 0 and not waiting.result["changed"]         # still within the timeout
    time.sleep(2)
    late = run_module("hepinfra.cloud.worker", {**task, "registration_timeout": 1}, env=env)
    assert late.rc == 0 and not late.failed, late.msg
    report = late.result["clouds"]["lv"]
    assert sorted(report["deleted"]) == sorted(launched) and len(report["launched"]) == 2
    assert all(w["reason"].startswith("never registered") for w in late.result["workers"]
               if w["name"] in launched)
    for token in tokens:
        assert token not in up.output + waiting.output + late.output


def test_a_launch_that_fails_after_its_token_was_minted_is_audited(
        htcondor_pool, libvirt_cloud, run_module, tmp_path):
    """A part that cannot be rendered fails the launch after the token was minted: the token stays
    valid until it expires, so the audit log names it; nothing was created and no token is shown."""
    cloud, path = libvirt_cloud
    env = {"CONTAINERS_CONF": str(podman.containers_conf())}
    audit = tmp_path / "audit.jsonl"
    task = {"clouds": [cloud], "group": GROUP, "config": "broken",
            "placements": [{"cloud": "lv", "count": 1, "flavor": "w1.tiny", "image": "wimg"}],
            "user_data": [{"type": "shell", "content": raw("#!/bin/sh\necho {{ no_such_variable }}\n")}],
            "condor": {"trust_domain": htcondor_pool.trust_domain,
                       "command_prefix": ["podman", "exec", htcondor_pool.container], "token_lifetime": 600},
            "audit_log": str(audit)}
    outcome = run_module("hepinfra.cloud.worker", task, env=env, verbosity=3)
    assert outcome.failed and "no_such_variable" in outcome.msg, outcome.msg
    report = outcome.result["clouds"]["lv"]
    assert report["launched"] == [] and len(report["errors"]) == 1
    assert not [v for v in path.iterdir() if v.name.startswith(f"{GROUP}--")]
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [r["event"] for r in records] == ["launch_failed"]
    worker_uuid = records[0]["uuid"]
    assert records[0]["token_identity"] == f"worker-{worker_uuid}@{htcondor_pool.trust_domain}"
    assert records[0]["token_expires"] and "no_such_variable" in records[0]["reason"]
    assert "eyJ" not in outcome.output + json.dumps(outcome.result) + audit.read_text()  # no JWT anywhere


def check_user_data(conn, name: str, worker_uuid: str, condor_config: str) -> None:
    """Each user-data part did its work in the guest, and cloud-init handled each by its type."""
    def sh(command: str) -> str:
        return in_guest(conn, name, command)[1]

    code, status = in_guest(conn, name, "cloud-init status --wait --long")
    # the CernVM part is for CernVM only: cloud-init on Debian skips it with a warning (status 2, degraded)
    assert code in (0, 2), status
    log = sh("cat /var/log/cloud-init.log")
    assert "Unhandled unknown content-type (text/ucernvm)" in log
    # cloud-config: its write_files (blank line of the block scalar kept) and runcmd, with the worker's context
    assert sh("cat /var/tmp/hepinfra-cloud-config") == f"group={GROUP}\n\ncloud=lv\n"
    assert sh("cat /var/tmp/hepinfra-runcmd").strip() == name
    assert sh("hostname").strip() == name
    # shell script: ran, heredoc body byte-exact (its comment kept, the script's own stripped)
    assert sh("cat /var/tmp/hepinfra-shell") == f"# kept: inside a heredoc\nuuid={worker_uuid}\n"
    # boothook: ran early, with the rendered UUID
    assert sh("cat /run/hepinfra-boothook").strip() == worker_uuid
    # file parts, the user's and the module's: byte-exact, merged with the cloud-config's write_files
    assert sh("cat /etc/condor/config.d/50-hepinfra.conf") == condor_config
    assert f'HepinfraWorkerUuid = "{worker_uuid}"' in sh("cat /etc/condor/config.d/55-hepinfra-worker.conf")
    assert sh("stat -c %a:%U /etc/condor/tokens.d/hepinfra-worker").strip() == "600:root"
    # cloud-init's log shows each part handed to its handler, by MIME type and file name
    for ctype, filename in (("text/cloud-config", r"\S+"), ("text/cloud-boothook", r"\S+"),
                            ("text/x-shellscript", "start.sh"), ("text/cloud-config", "write-files.cfg")):
        assert re.search(r"Calling handler \S+: \[.*\] \(%s, %s, \d\)" % (re.escape(ctype), filename), log), \
            "cloud-init.log shows no handler for %s %s:\n%s" % (ctype, filename, log[-6000:])
