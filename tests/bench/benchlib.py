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
        {"name": "module", module: "{{ module_args }}", "register": "out", "ignore_errors": True},
        {"name": "keep", "ansible.builtin.copy": {"content": "{{ out | to_json }}", "dest": str(work / "out.json")}},
    ]}]
    (work / "play.yml").write_text(json.dumps(play))
    started = time.monotonic()
    proc = subprocess.run(["ansible-playbook", "-i", "localhost,", "-c", "local", str(work / "play.yml")], check=False,
                          capture_output=True, text=True, env=dict(os.environ, ANSIBLE_PYTHON_INTERPRETER=sys.executable))
    elapsed = time.monotonic() - started
    if proc.returncode != 0:
        sys.exit(f"{module} could not run (exit {proc.returncode}):\n{proc.stdout[-6000:]}\n{proc.stderr[-2000:]}")
    result = json.loads((work / "out.json").read_text())
    if result.get("failed"):
        errors = [error for cloud in (result.get("clouds") or {}).values() for error in cloud.get("errors", [])]
        sys.exit(f"{module} failed: {result.get('msg')}\n" + "\n".join(errors[:10]))
    return result, elapsed
