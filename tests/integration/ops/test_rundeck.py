"""docs/rundeck/hepinfra-jobs.yml: Rundeck's YAML job format, and each job's command turns its
options into the extra vars of a playbook that ansible-playbook accepts.

No Rundeck server runs here (it is a Java service outside Debian): the structure is checked
against the job format Rundeck documents, and each inline script is run as Rundeck would run it
(option tokens replaced) with the real ansible-playbook doing a --syntax-check of the playbook.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
JOBS_FILE = ROOT / "docs" / "rundeck" / "hepinfra-jobs.yml"
JOB_KEYS = {"name", "group", "description", "loglevel", "multipleExecutions", "nodeFilterEditable", "options",
            "sequence", "schedule", "scheduleEnabled", "timeout", "uuid"}
OPTION_KEYS = {"name", "description", "required", "value", "values", "enforced", "regex", "secure"}
TOKEN = re.compile(r"@option\.([A-Za-z0-9_]+)@|\$\{option\.([A-Za-z0-9_]+)\}")


def jobs() -> list[dict]:
    return yaml.safe_load(JOBS_FILE.read_text())


def test_the_jobs_follow_rundecks_yaml_job_format():
    loaded = jobs()
    assert isinstance(loaded, list)
    assert [job["name"] for job in loaded] == ["deploy", "scale", "backup", "images"]
    for job in loaded:
        assert set(job) <= JOB_KEYS, set(job) - JOB_KEYS
        assert job["group"] == "hepinfra" and job["description"]
        assert job["loglevel"] in ("DEBUG", "VERBOSE", "INFO", "WARN", "ERROR")
        assert job["multipleExecutions"] is False            # never two runs of one job at once
        names = [option["name"] for option in job["options"]]
        assert len(set(names)) == len(names)
        for option in job["options"]:
            assert set(option) <= OPTION_KEYS and re.fullmatch(r"[A-Za-z0-9_]+", option["name"])
            if option.get("enforced"):
                assert option["value"] in option["values"]
        sequence = job["sequence"]
        assert sequence["keepgoing"] is False and sequence["strategy"] in ("node-first", "sequential", "parallel")
        for command in sequence["commands"]:
            assert ("script" in command) != ("exec" in command)
            used = {a or b for a, b in TOKEN.findall(command.get("script") or command.get("exec"))}
            assert used <= set(names), "undefined options: %s" % (used - set(names))
        if "schedule" in job:
            schedule = job["schedule"]
            assert set(schedule) == {"month", "year", "weekday", "time"}
            assert set(schedule["time"]) == {"hour", "minute", "seconds"}
            assert job["scheduleEnabled"] is True
    schedules = {job["name"]: job["schedule"]["time"] for job in loaded if "schedule" in job}
    assert schedules == {"scale": {"hour": "*", "minute": "*", "seconds": "0"},
                         "backup": {"hour": "02", "minute": "30", "seconds": "0"}}


def run_job(job: dict, options: dict, workdir: Path) -> list[str]:
    """Run the job's script as Rundeck would, with a recording ansible-playbook first on PATH; return its argv."""
    defaults = {option["name"]: option.get("value", "") for option in job["options"]}
    values = {**defaults, "inventory_dir": str(workdir), **options}
    script = TOKEN.sub(lambda m: values[m.group(1) or m.group(2)], job["sequence"]["commands"][0]["script"])
    bindir = workdir / "bin"
    bindir.mkdir(exist_ok=True)
    record = workdir / "argv.json"
    fake = bindir / "ansible-playbook"
    fake.write_text("#!%s\nimport json, sys\njson.dump(sys.argv[1:], open(%r, 'w'))\n" % (sys.executable, str(record)))
    fake.chmod(0o755)
    done = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=False,
                          env=dict(os.environ, PATH="%s:%s" % (bindir, os.environ["PATH"])))
    assert done.returncode == 0, done.stderr
    return json.loads(record.read_text())


def extra_vars(argv: list[str]) -> dict:
    out: dict = {}
    for index, arg in enumerate(argv):
        if arg == "-e":
            value = argv[index + 1]
            out.update(json.loads(value) if value.startswith("{") else dict([value.split("=", 1)]))
    return out


@pytest.mark.parametrize("name, options, playbook, expected", [
    ("deploy", {"hosts": "htcondor_execute", "check": "true"}, "hepinfra.cloud.site",
     {"hepinfra_site_hosts": "htcondor_execute"}),
    ("scale", {"check_only": "true"}, "hepinfra.cloud.scale", {"scale_check_only": "true"}),
    ("backup", {"hosts": "hv01", "domains": "cm-*,db01"}, "hepinfra.cloud.backup",
     {"backup_hosts": "hv01", "backup_domains": ["cm-*", "db01"]}),
    ("images", {"targets": "os-a,hv01"}, "hepinfra.cloud.images", {"images_targets": ["os-a", "hv01"]}),
    ("images", {}, "hepinfra.cloud.images", {}),
])
def test_options_become_extra_vars_of_a_playbook_ansible_accepts(name, options, playbook, expected, tmp_path):
    job = next(j for j in jobs() if j["name"] == name)
    argv = run_job(job, options, tmp_path)
    assert argv[:3] == ["-i", "inventory", playbook]
    assert extra_vars(argv) == expected
    assert ("--check" in argv) == (options.get("check") == "true")
    # The real ansible-playbook takes the same command line (in the inventory directory).
    (tmp_path / "inventory").write_text("localhost ansible_connection=local\n")
    (tmp_path / ".vault-pass").write_text("not-used\n")
    done = subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), *argv, "--syntax-check"],
                          cwd=tmp_path, capture_output=True, text=True, check=False,
                          env=dict(os.environ, ANSIBLE_NOCOLOR="1"))
    assert done.returncode == 0, done.stdout + done.stderr
