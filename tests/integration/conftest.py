"""Shared by every integration test: run a module the way users do, through ansible-playbook.

The collection comes from ANSIBLE_COLLECTIONS_PATH (the Makefile copies the tree there).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from hepinfra_testbed import guest
from hepinfra_testbed.common import run


@dataclass
class Result:
    """One module run through ansible-playbook."""

    rc: int
    result: dict
    output: str

    @property
    def failed(self) -> bool:
        return bool(self.result.get("failed"))

    @property
    def msg(self) -> str:
        return str(self.result.get("msg", ""))


@pytest.fixture
def run_module(tmp_path):
    """Run one module task with ansible-playbook; return its registered result and all output."""
    counter = [0]

    def run_it(module: str, args: dict, *, check_mode: bool = False, diff: bool = False, verbosity: int = 0, env: dict | None = None) -> Result:
        counter[0] += 1
        work = tmp_path / f"play{counter[0]}"
        work.mkdir()
        (work / "args.json").write_text(json.dumps({"module_args": args}))
        out = work / "result.json"
        play = [{
            "hosts": "localhost",
            "gather_facts": False,
            "vars_files": [str(work / "args.json")],
            "tasks": [
                {"name": "module under test", module: "{{ module_args }}", "register": "outcome",
                 "ignore_errors": True, "check_mode": check_mode, "diff": diff},
                {"name": "keep the result", "ansible.builtin.copy": {"content": "{{ outcome | to_json }}", "dest": str(out)},
                 "check_mode": False},
            ],
        }]
        (work / "play.yml").write_text(json.dumps(play))
        full_env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_LOCAL_TEMP=str(work / "tmp"),
                        ANSIBLE_PYTHON_INTERPRETER=sys.executable)
        full_env.update(env or {})
        argv = ["ansible-playbook", "-i", "localhost,", "-c", "local", str(work / "play.yml")]
        if verbosity:
            argv.append("-" + "v" * verbosity)
        proc = subprocess.run(argv, capture_output=True, text=True, env=full_env, timeout=1800, check=False)
        result = json.loads(out.read_text()) if out.exists() else {}
        return Result(proc.returncode, result, proc.stdout + proc.stderr)

    return run_it


@pytest.fixture(scope="session")
def libvirt_daemon():
    """The testbed's private libvirtd."""
    guest.daemon_up()


@pytest.fixture
def libvirt_pools(libvirt_daemon):  # pylint: disable=unused-argument
    """Factory: a transient directory pool and its libvirt cloud definition; destroyed after the test."""
    created = []

    def make(short: str, **extra) -> tuple[dict, Path]:
        # /dev/kvm has been seen to lose its group during a run (then every define re-probes
        # QEMU for about 40 s): daemon_up puts it right again before each test's pool.
        guest.daemon_up()
        name = f"{guest.PREFIX}-img-{short}-{uuid.uuid4().hex[:6]}"
        # QEMU runs as its own user: it must be able to reach the pool's files (pytest's tmp is 0700).
        path = Path(tempfile.mkdtemp(prefix=f"{name}-"))
        path.chmod(0o711)
        run(["virsh", "-c", guest.URI, "pool-create-as", name, "dir", "--target", path])
        created.append((name, path))
        return dict({"name": short, "type": "libvirt", "libvirt": {"uri": guest.URI, "pool": name}}, **extra), path

    yield make
    for name, path in created:
        run(["virsh", "-c", guest.URI, "pool-destroy", name], check=False)
        shutil.rmtree(path, ignore_errors=True)
