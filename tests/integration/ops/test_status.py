"""playbooks/status.yml: the status page of a known run, rendered by a real headless browser
(Chromium from Debian), shows that run's numbers, and its plots are drawn.

The run: a scaling history of 6 cycles (2 workers launched for 4 jobs, busy, idle, drained and
deleted; 1 job no flavor fits), the backup playbook's summary of 2 hypervisors (one failed) and,
from a real libvirt cloud, the image x cloud matrix.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest

BROWSERS = ("chromium", "chromium-headless-shell", "chrome-headless-shell")


def browser() -> str:
    for name in BROWSERS:
        found = shutil.which(name) or (f"/usr/lib/chromium/{name}" if Path(f"/usr/lib/chromium/{name}").exists() else None)
        if found:
            return found
    raise AssertionError("no headless Chromium: `make bootstrap` installs Debian's chromium")


def history(now: float) -> list[dict]:
    def cycle(minutes_ago, idle, running, workers, launched=None, drained=0, deleted=0):
        epoch = now - minutes_ago * 60
        return {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch)), "epoch": epoch, "duration": 1.0,
                "jobs": {"g1": {"idle": idle, "running": running}}, "unmatched_jobs": 0, "workers": {"lv": workers},
                "launched": launched or {}, "drained": drained, "deleted": deleted, "shortfall": {},
                "unfit": {"g1": 1}, "errors": 0, "lock_waited": 0.0}
    return [cycle(30 * 60, 9, 9, {"busy": 9}),                       # older than the 24 h window: left out
            cycle(10, 5, 0, {}, {"lv": {"g1": 2}}), cycle(8, 1, 4, {"busy": 2}), cycle(6, 1, 2, {"busy": 1, "idle": 1}),
            cycle(4, 1, 0, {"idle": 2}), cycle(2, 1, 0, {"idle": 2}, drained=2, deleted=2), cycle(1, 1, 0, {})]


BACKUPS = {"finished": "2026-12-04T02:41:07Z", "hosts": {
    "hv1": {"failed": False, "domains": [
        {"name": "cm", "state": "done", "duration": 41, "bytes_read": 2147483648, "bytes_added": 10485760},
        {"name": "squid1", "state": "done", "duration": 12, "bytes_read": 1073741824, "bytes_added": 0}]},
    "hv2": {"failed": True, "msg": "host unreachable", "domains": []}}}


def png_colours(data: bytes) -> set[tuple[int, int, int]]:
    """The distinct RGB colours of an 8-bit, non-interlaced RGB or RGBA PNG (what Chromium writes)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    position, chunks, header = 8, [], None
    while position < len(data):
        length, kind = struct.unpack(">I4s", data[position:position + 8])
        body = data[position + 8:position + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            chunks.append(body)
        position += 12 + length
    width, height, depth, colour_type, _c, _f, interlace = header
    assert depth == 8 and colour_type in (2, 6) and interlace == 0, header
    step = 3 if colour_type == 2 else 4
    raw = zlib.decompress(b"".join(chunks))
    stride = width * step
    previous = bytearray(stride)
    colours = set()
    for row in range(height):
        kind = raw[row * (stride + 1)]
        line = bytearray(raw[row * (stride + 1) + 1:(row + 1) * (stride + 1)])
        for i in range(stride):
            left = line[i - step] if i >= step else 0
            up = previous[i]
            corner = previous[i - step] if i >= step else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                estimate = left + up - corner
                pa, pb, pc = abs(estimate - left), abs(estimate - up), abs(estimate - corner)
                line[i] = (line[i] + (left if pa <= pb and pa <= pc else up if pb <= pc else corner)) & 0xFF
        for i in range(0, stride, step):
            colours.add((line[i], line[i + 1], line[i + 2]))
        previous = line
    return colours


def test_the_status_page_of_a_known_run(libvirt_pools, run_module, tmp_path):
    # A real cloud with one image, for the matrix.
    cloud, _pool = libvirt_pools("st")
    image = tmp_path / "img.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "16M"], check=True)
    uploaded = run_module("hepinfra.cloud.image", {"clouds": [cloud], "name": "worker-el9", "src": str(image),
                                                   "checksum_cache": ""})
    assert uploaded.rc == 0 and not uploaded.failed, uploaded.output
    version = uploaded.result["clouds"]["st"]["version"]
    now = time.time()
    (tmp_path / "history.jsonl").write_text("".join(json.dumps(c) + "\n" for c in history(now)) + '{"epoch": 17')
    (tmp_path / "backup").mkdir()
    (tmp_path / "backup" / "last.json").write_text(json.dumps(BACKUPS))
    out = tmp_path / "status"
    extra = {"status_dir": str(out), "scale_history": str(tmp_path / "history.jsonl"),
             "backup_summary_dir": str(tmp_path / "backup"), "hepinfra_clouds": [cloud], "status_workers": False}
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_PYTHON_INTERPRETER=sys.executable)
    argv = ["ansible-playbook", "-i", "localhost,", "-c", "local", "hepinfra.cloud.status", "-e", json.dumps(extra)]
    first = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-2000:]
    assert "launched 2, drained 2, deleted 2, cycles with errors 0" in first.stdout
    assert "backups: finished 2026-12-04T02:41:07Z, 2 domains on 2 hypervisors, 1 failed: hv2" in first.stdout
    # Unchanged figures: the files are not rewritten (the generation time alone is no change).
    again = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    assert re.search(r"localhost\s*: ok=\d+\s+changed=0\s", again.stdout), again.stdout[-3000:]

    page = out / "index.html"
    dom = subprocess.run([browser(), "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, check=True, timeout=120).stdout
    shown = dict(re.findall(r'data-figure="([^"]+)"[^>]*>([^<]*)<', dom))
    assert {key: shown[key] for key in ("jobs.g1.idle", "jobs.g1.running", "unfit.g1", "launched", "drained",
                                        "deleted", "backups.domains", "backups.failed")} == {
        "jobs.g1.idle": "1", "jobs.g1.running": "0", "unfit.g1": "1", "launched": "2", "drained": "2", "deleted": "2",
        "backups.domains": "2", "backups.failed": "1"}
    assert shown["images.worker-el9.st"] == version
    assert "6 cycles in the window" in dom                           # the 30-hour-old one and the broken line are out
    shot = tmp_path / "page.png"
    subprocess.run([browser(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--window-size=1000,1400", f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, text=True, check=True, timeout=120)
    colours = png_colours(shot.read_bytes())
    # The plots were drawn: each series and bar colour is on the rendered page.
    for hex_colour in ("#d95f02", "#1b9e77", "#7570b3", "#1f78b4", "#e7298a"):
        rgb = tuple(int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))
        assert rgb in colours, "%s is not on the rendered page" % hex_colour


@pytest.fixture(autouse=True)
def _no_leftover_browser():
    yield
    subprocess.run(["pkill", "-f", "chromium.*--headless"], check=False)
