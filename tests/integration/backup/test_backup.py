"""libvirt_backup and libvirt_restore against real libvirt/QEMU, restic 0.18 and S3 (SeaweedFS)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest
from conftest import PASSWORD, Repo, domain_xml, image_sha256
from hepinfra_testbed import guest
from hepinfra_testbed.common import run

BACKUP = "hepinfra.cloud.libvirt_backup"
RESTORE = "hepinfra.cloud.libvirt_restore"


def assert_untouched(domain, before_live, before_inactive, domid=None):
    """The domain is where it was: running on its original images, nothing of a backup left."""
    assert domain.sources() == before_live
    assert domain.sources(inactive=True) == before_inactive
    assert domain.leftovers() == []
    assert domain.libvirt_snapshots() == []
    assert domain.checkpoints() == []
    if domid is not None:
        assert domain.state() == "running"
        assert domain.domid() == domid


def test_live_backup_incremental_and_renamed_restore(firmware_domain, repo, pool, run_module):
    domain = firmware_domain("live")
    live, inactive, domid = domain.sources(), domain.sources(inactive=True), domain.domid()
    expected = {target: image_sha256(path) for target, path in domain.disks.items()}

    first = run_module(BACKUP, dict(repo.args, domains=[domain.name]))
    assert not first.failed, first.msg
    assert first.result["changed"] and first.result["repository_created"]
    entry = first.result["domains"][0]
    assert entry["state"] == "backed up" and entry["running"] is True
    assert entry["quiesced"] is False  # the firmware has no guest agent answering
    assert {d["target"]: d["sha256"] for d in entry["disks"]} == expected
    assert {d["target"]: d["size"] for d in entry["disks"]} == {"vda": 64 << 20, "vdb": 16 << 20}
    assert_untouched(domain, live, inactive, domid)

    snapshots = repo.snapshots("hepinfra-libvirt,run=" + entry["run"] + ",domain=" + domain.name)
    assert sorted(s["paths"][0] for s in snapshots) == sorted(
        ["/%s.vda.raw" % domain.name, "/%s.vdb.raw" % domain.name, "/%s.manifest.json" % domain.name])
    manifest = json.loads(repo.restic("dump", entry["manifest_snapshot"], "/%s.manifest.json" % domain.name).stdout)
    assert manifest["domain"] == domain.name and "<domain" in manifest["xml"]
    assert {d["target"]: d["sha256"] for d in manifest["disks"]} == expected

    second = run_module(BACKUP, dict(repo.args, domains=[domain.name]))
    assert not second.failed, second.msg
    again = second.result["domains"][0]
    assert again["run"] != entry["run"]
    assert sum(d["bytes_added"] for d in again["disks"]) < sum(d["bytes_added"] for d in entry["disks"]) / 20
    assert_untouched(domain, live, inactive, domid)

    pool_name, pool_path = pool("second")
    restored = run_module(RESTORE, dict(repo.args, domain=domain.name, name=domain.name + "-copy", pool=pool_name,
                                        snapshot=entry["run"], start=True))
    assert not restored.failed, restored.msg
    out = restored.result
    assert out["run"] == entry["run"] and out["defined"] and out["started"]
    for disk in out["disks"]:
        assert disk["path"].startswith(str(pool_path)) and disk["verified"]
        assert image_sha256(disk["path"]) == expected[disk["target"]]
    copy_xml = run(["virsh", "-c", "qemu:///system", "dumpxml", domain.name + "-copy"]).stdout
    original_xml = run(["virsh", "-c", "qemu:///system", "dumpxml", domain.name]).stdout
    assert "52:54:00:aa:bb:01" in original_xml and "52:54:00:aa:bb:01" not in copy_xml
    assert str(pool_path) in copy_xml and domain.disks["vda"] not in copy_xml
    try:
        assert run(["virsh", "-c", "qemu:///system", "domstate", domain.name + "-copy"]).stdout.strip() == "running"
        # the copy is independent of the original's base image
        assert "backingStore type='file'" not in copy_xml
    finally:
        run(["virsh", "-c", "qemu:///system", "destroy", domain.name + "-copy"], check=False)
        run(["virsh", "-c", "qemu:///system", "undefine", domain.name + "-copy"], check=False)


def test_shut_off_domain_and_check_mode(firmware_domain, repo, run_module):
    domain = firmware_domain("off", running=False)
    planned = run_module(BACKUP, dict(repo.args, domains=["*-bk-off"]), check_mode=True)
    assert not planned.failed, planned.msg
    assert planned.result["changed"]
    assert [(d["name"], d["state"]) for d in planned.result["domains"]] == [(domain.name, "would back up")]
    assert repo.restic("cat", "config", check=False).returncode == 10  # check mode created nothing

    done = run_module(BACKUP, dict(repo.args, domains=[domain.name]))
    assert not done.failed, done.msg
    entry = done.result["domains"][0]
    assert entry["running"] is False and entry["state"] == "backed up"
    assert {d["target"]: d["sha256"] for d in entry["disks"]} == {t: image_sha256(p) for t, p in domain.disks.items()}
    assert domain.state() == "shut off"


def test_retention_keeps_complete_runs_and_drops_interrupted_ones(firmware_domain, repo, run_module):
    domain = firmware_domain("keep")
    runs = []
    for _attempt in range(3):
        done = run_module(BACKUP, dict(repo.args, domains=[domain.name], keep_last=2, snapshot_host="localhost"))
        assert not done.failed, done.msg
        runs.append(done.result["domains"][0]["run"])
    # an interrupted run: a disk snapshot and no manifest
    subprocess.run([repo.args["restic_path"], "backup", "--stdin", "--stdin-filename", f"{domain.name}.vda.raw",
                    "--tag", "hepinfra-libvirt", "--tag", "run=20200101T000000Z-abcdef", "--tag", "kind=disk",
                    "--tag", "disk=vda", "--host", "localhost"],
                   input=b"partial", env=dict(os.environ, RESTIC_REPOSITORY=repo.url, RESTIC_PASSWORD=PASSWORD, **repo.env),
                   check=True, capture_output=True)
    done = run_module(BACKUP, dict(repo.args, domains=[domain.name], keep_last=2, snapshot_host="localhost"))
    assert not done.failed, done.msg
    runs.append(done.result["domains"][0]["run"])
    assert done.result["pruned"] is True
    left = {next(t[4:] for t in s["tags"] if t.startswith("run=")) for s in repo.snapshots("hepinfra-libvirt")}
    assert left == set(runs[-2:])
    assert len(repo.snapshots("hepinfra-libvirt")) == 6


def test_restore_refusals_single_disk_and_force(firmware_domain, repo, pool, run_module):
    domain = firmware_domain("refuse")
    done = run_module(BACKUP, dict(repo.args, domains=[domain.name]))
    assert not done.failed, done.msg
    pool_name, pool_path = pool("refuse")

    over_running = run_module(RESTORE, dict(repo.args, domain=domain.name, pool=pool_name, force=True))
    assert over_running.failed and "is running" in over_running.msg
    assert list(pool_path.iterdir()) == []

    partial = run_module(RESTORE, dict(repo.args, domain=domain.name, pool=pool_name, disks=["vdb"]))
    assert partial.failed and "define: false" in partial.msg

    single = run_module(RESTORE, dict(repo.args, domain=domain.name, name="single", pool=pool_name, disks=["vdb"],
                                      define=False, format="raw"))
    assert not single.failed, single.msg
    assert [d["volume"] for d in single.result["disks"]] == ["single-vdb.img"]
    assert image_sha256(pool_path / "single-vdb.img") == image_sha256(domain.disks["vdb"])
    assert stat.S_IMODE(os.stat(pool_path / "single-vdb.img").st_mode) == 0o600

    again = run_module(RESTORE, dict(repo.args, domain=domain.name, name="single", pool=pool_name, disks=["vdb"],
                                     define=False, format="raw"))
    assert again.failed and "already exists" in again.msg

    (pool_path / "single-vdb.img").write_bytes(b"damaged")
    forced = run_module(RESTORE, dict(repo.args, domain=domain.name, name="single", pool=pool_name, disks=["vdb"],
                                      define=False, format="raw", force=True))
    assert not forced.failed, forced.msg
    assert image_sha256(pool_path / "single-vdb.img") == image_sha256(domain.disks["vdb"])

    # a volume a running domain uses is never overwritten, force or not
    user = guest.domain_name("bk-user")
    run(["virsh", "-c", "qemu:///system", "create", "/dev/stdin"], input_text=domain_xml(
        user, [("vdb", pool_path / "single-vdb.img", "raw", False)], agent=False).replace("52:54:00:aa:bb:01", "52:54:00:aa:bb:02"))
    try:
        in_use = run_module(RESTORE, dict(repo.args, domain=domain.name, name="single", pool=pool_name, disks=["vdb"],
                                          define=False, format="raw", force=True))
        assert in_use.failed and f"in use by running domain {user}" in in_use.msg
    finally:
        run(["virsh", "-c", "qemu:///system", "destroy", user], check=False)

    missing = run_module(RESTORE, dict(repo.args, domain="no-such-domain", pool=pool_name))
    assert missing.failed and "no complete backup of domain no-such-domain" in missing.msg
    unknown_run = run_module(RESTORE, dict(repo.args, domain=domain.name, pool=pool_name, snapshot="20200101T000000Z-000000"))
    assert unknown_run.failed and "has no backup run or snapshot" in unknown_run.msg


# -- faults: after each, the domain runs on its original images and the next backup works -----

def _killing_restic(tmp_path, real: str) -> str:
    """A restic that is killed (SIGKILL) a moment into the backup of disk vdb (after vda was saved)."""
    script = tmp_path / "restic-killed"
    script.write_text(
        "#!/bin/sh\n"
        "case \" $* \" in *\" --stdin \"*\".vdb.raw \"*)\n"
        f"  \"{real}\" \"$@\" 0<&0 &\n"
        "  pid=$!; sleep 0.2; kill -9 $pid; wait $pid; exit $?;;\n"
        "esac\n"
        f"exec \"{real}\" \"$@\"\n"
    )
    script.chmod(0o755)
    return str(script)


@pytest.mark.parametrize("fault", ["agent", "snapshot-disk-full", "restic-killed", "wrong-password",
                                   "repository-disk-full", "unreachable"])
def test_fault_leaves_nothing_half_done(fault, firmware_domain, repo, run_module, tmpfs, tmp_path):
    domain = firmware_domain("f-" + fault, vda_random_mib=48)
    live, inactive, domid = domain.sources(), domain.sources(inactive=True), domain.domid()
    args = dict(repo.args, domains=[domain.name])
    if fault == "agent":
        args["quiesce"] = "required"
        expect = "quiesce: the guest agent is not connected"
    elif fault == "snapshot-disk-full":
        full = tmpfs("overlays", "256k")
        subprocess.run(["dd", "if=/dev/zero", f"of={full}/filler", "bs=4k"], capture_output=True, check=False)
        args["overlay_dir"] = str(full)
        expect = "snapshot:"
    elif fault == "restic-killed":
        args["restic_path"] = _killing_restic(tmp_path, repo.args["restic_path"])
        expect = "backup vdb: restic exited with 137"  # 128 + SIGKILL, through the wrapper shell
    elif fault == "wrong-password":
        assert not run_module(BACKUP, dict(repo.args, domains=[domain.name], disks=["vdb"])).failed
        args["repository_password"] = "not-the-password"
        expect = "wrong repository password"
    elif fault == "repository-disk-full":
        args["repository"] = str(tmpfs("repository", "24m") / "repo")
        expect = "no space left on device"
    else:
        args["repository"] = "s3:http://127.0.0.1:9/hepinfra-backups/nowhere"
        expect = "connection refused"

    failed = run_module(BACKUP, args)
    assert failed.failed, failed.result
    assert expect in failed.msg.lower() or expect in failed.msg
    assert_untouched(domain, live, inactive, domid)
    phases = {"agent": "quiesce", "snapshot-disk-full": "snapshot", "restic-killed": "backup vdb",
              "repository-disk-full": "backup vda"}
    if fault in phases:
        entry = failed.result["domains"][0]
        assert entry["state"] == "failed" and entry["phase"] == phases[fault]
        # the failed run wrote nothing that a restore or retention could mistake for a backup
        written_to = Repo(args["repository"], args, repo.env) if fault == "repository-disk-full" else repo
        assert [s for s in written_to.snapshots("hepinfra-libvirt") if f"run={entry['run']}" in s["tags"]] == []

    recovered = run_module(BACKUP, dict(repo.args, domains=[domain.name]))
    assert not recovered.failed, recovered.msg
    assert {d["target"]: d["sha256"] for d in recovered.result["domains"][0]["disks"]} == {
        t: image_sha256(p) for t, p in domain.disks.items()}
    assert_untouched(domain, live, inactive, domid)


@pytest.mark.parametrize("then_shut_off", [False, True], ids=["running", "shut-off"])
def test_overlays_of_a_killed_run_are_committed_back(then_shut_off, firmware_domain, repo, run_module):
    """A run killed between snapshot and commit leaves the domain on an overlay: the next run repairs it."""
    domain = firmware_domain("crash-" + ("off" if then_shut_off else "on"))
    live, inactive = domain.sources(), domain.sources(inactive=True)
    expected = {t: image_sha256(p) for t, p in domain.disks.items()}
    overlay = domain.disks["vda"] + ".hepinfra-backup-20261128T000000Z-0a0b0c.qcow2"
    domain.virsh("snapshot-create-as", domain.name, "--disk-only", "--atomic", "--no-metadata",
                 "--diskspec", f"vda,file={overlay}", "--diskspec", "vdb,snapshot=no")
    assert domain.sources()["vda"] == overlay
    if then_shut_off:
        domain.virsh("destroy", domain.name)
        assert domain.sources(inactive=True)["vda"] == overlay

    done = run_module(BACKUP, dict(repo.args, domains=[domain.name]))
    assert not done.failed, done.msg
    entry = done.result["domains"][0]
    assert entry["recovered"] == [{"target": "vda", "overlay": overlay, "image": domain.disks["vda"]}]
    assert {d["target"]: d["sha256"] for d in entry["disks"]} == expected
    assert domain.sources(inactive=True) == inactive
    assert domain.leftovers() == []
    if not then_shut_off:
        assert domain.sources() == live


def test_secrets_stay_out_of_output_and_arguments(firmware_domain, repo, pool, run_module, tmp_path):
    """The password and the S3 secret appear in no result, no -vvv output and no restic command line."""
    log = tmp_path / "argv.log"
    spy = tmp_path / "restic-spy"
    spy.write_text("#!/bin/sh\n"
                   f"echo \"$* | password-from-env=${{RESTIC_PASSWORD:+yes}}\" >> {log}\n"
                   f"exec \"{repo.args['restic_path']}\" \"$@\"\n")
    spy.chmod(0o755)
    domain = firmware_domain("secret")
    pool_name = pool("secret")[0]
    args = dict(repo.args, restic_path=str(spy), domains=[domain.name])
    runs = [
        run_module(BACKUP, args, verbosity=3),
        run_module(RESTORE, dict(repo.args, restic_path=str(spy), domain=domain.name, name="secret-copy", pool=pool_name,
                                 define=False), verbosity=3),
        run_module(BACKUP, dict(args, repository_password="wrong-" + PASSWORD), verbosity=3),
        run_module(BACKUP, dict(args, s3_secret_access_key=repo.args["s3_secret_access_key"] + "x", repository_timeout=3),
                   verbosity=3),
    ]
    assert [r.failed for r in runs] == [False, False, True, True]
    secrets = [PASSWORD, repo.args["s3_secret_access_key"]]
    for outcome in runs:
        text = outcome.output + json.dumps(outcome.result)
        for secret in secrets:
            assert secret not in text
    calls = log.read_text()
    assert "backup --stdin" in calls and "dump" in calls
    assert all(line.endswith("password-from-env=yes") for line in calls.splitlines())
    for secret in secrets:
        assert secret not in calls


def test_backup_playbook_writes_a_summary_and_fails_on_failure(firmware_domain, repo, tmp_path):
    domain = firmware_domain("play")
    summary = tmp_path / "summary"
    inventory = {"hypervisors": {"hosts": {"localhost": {
        "ansible_connection": "local", "ansible_python_interpreter": sys.executable, "backup_become": False,
        "backup_summary_dir": str(summary), "backup_domains": [domain.name], "backup_keep_last": 3,
        **{"backup_" + key: value for key, value in repo.args.items()},
    }}}}
    (tmp_path / "inventory.json").write_text(json.dumps(inventory))

    def play(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(["ansible-playbook", "-i", str(tmp_path / "inventory.json"), "hepinfra.cloud.backup", *extra],
                              capture_output=True, text=True, check=False, timeout=600,
                              env=dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_LOCAL_TEMP=str(tmp_path / "tmp")))

    good = play()
    assert good.returncode == 0, good.stdout + good.stderr
    last = json.loads((summary / "last.json").read_text())
    report = last["hosts"]["localhost"]
    assert report["failed"] is False
    assert [(d["name"], d["state"]) for d in report["domains"]] == [(domain.name, "backed up")]
    assert report["domains"][0]["bytes_read"] == (64 + 16) << 20
    text = (summary / "last.txt").read_text()
    assert "localhost: ok" in text and domain.name in text

    bad = play("-e", "backup_repository_password=not-the-password")
    assert bad.returncode != 0
    report = json.loads((summary / "last.json").read_text())["hosts"]["localhost"]
    assert report["failed"] is True and "wrong repository password" in report["msg"]
    assert "localhost: FAILED" in (summary / "last.txt").read_text()
    assert len((summary / "history.jsonl").read_text().splitlines()) == 2
