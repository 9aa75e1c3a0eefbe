"""The systemd units docs/backup.md and docs/scaling.md give (scheduled backups, scaling cycles) are
valid and match docs/systemd/."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
UNITS = ROOT / "docs" / "systemd"


@pytest.mark.parametrize("guide, units", [("backup.md", ["hepinfra-backup.service", "hepinfra-backup.timer"]),
                                          ("scaling.md", ["hepinfra-scale.service", "hepinfra-scale.timer"])])
def test_the_guide_shows_exactly_the_shipped_unit_files(guide, units):
    text = (ROOT / "docs" / guide).read_text()
    blocks = {m.group(1): m.group(2) for m in re.finditer(r"```ini\n# /etc/systemd/system/(\S+)\n(.*?)```", text, re.S)}
    assert sorted(blocks) == units
    for name, text in blocks.items():
        assert text == (UNITS / name).read_text()


def test_units_pass_systemd_analyze_verify(tmp_path):
    ansible_playbook = Path(sys.executable).parent / "ansible-playbook"
    for unit in UNITS.iterdir():
        # the unit names the usual path; verify checks that the binary exists, so point it at ours
        (tmp_path / unit.name).write_text(unit.read_text().replace("/usr/bin/ansible-playbook", str(ansible_playbook)))
    proc = subprocess.run(["systemd-analyze", "verify", "--man=no", *sorted(str(p) for p in tmp_path.iterdir())],
                          capture_output=True, text=True, check=False, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    calendar = subprocess.run(["systemd-analyze", "calendar", "*-*-* 02:30:00"], capture_output=True, text=True, check=True)
    assert "Next elapse" in calendar.stdout
