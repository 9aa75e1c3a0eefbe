"""Shared by the benchmarks: run one module task through ansible-playbook, timed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path


def run_module(work: Path, module: str, args: dict) -> tuple[dict, float]:
    """Run `module` with `args` on localhost as users do; return its registered result and the wall time."""
    (work / "args.json").write_text(json.dumps({"module_args": args}))
    play = [{"hosts": "localhost", "gather_facts": False, "vars_files": [str(work / "args.json")], "tasks": [
        {"name": "module", module: "{{ module_args }}", "register": "out"},
        {"name": "keep", "ansible.builtin.copy": {"content": "{{ out | to_json }}", "dest": str(work / "out.json")}},
    ]}]
    (work / "play.yml").write_text(json.dumps(play))
    started = time.monotonic()
    subprocess.run(["ansible-playbook", "-i", "localhost,", "-c", "local", str(work / "play.yml")], check=True,
                   capture_output=True, env=dict(os.environ, ANSIBLE_PYTHON_INTERPRETER=sys.executable))
    return json.loads((work / "out.json").read_text()), time.monotonic() - started
