"""Shared by every integration test: run a module the way users do, through ansible-playbook.

The collection comes from ANSIBLE_COLLECTIONS_PATH (the Makefile copies the tree there).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass

import pytest


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
