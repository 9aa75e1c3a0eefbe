# -*- coding: utf-8 -*-
# Copyright: hepinfra.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Pure helpers of libvirt_backup/libvirt_restore.

fixtures/domain_live_overlay.xml is the live XML libvirt 9.0 gave for a running domain
whose vda was left on a backup overlay (an interrupted run); the end-to-end behaviour is
tested in tests/integration/backup against real libvirt, restic and S3.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from xml.etree import ElementTree

import pytest

from ansible_collections.hepinfra.cloud.plugins.module_utils._libvirt_disks import (
    Disk, agent_connected, check_tag, disk_filename, is_backup_overlay, kept_run_ids, new_run_id, overlay_path, parse_disks,
    pick_manifest, restore_xml, run_tags, runs_to_forget, select_disks, select_domains, snapshot_of_domain, snapshot_xml,
)
from ansible_collections.hepinfra.cloud.plugins.module_utils._base import HepinfraError
from ansible_collections.hepinfra.cloud.plugins.module_utils._restic import check_repository, redact_url

LIVE = (Path(__file__).parent / "fixtures" / "domain_live_overlay.xml").read_text()


def test_parse_disks_reads_sources_formats_and_the_backing_image_of_an_overlay():
    vda, vdb = parse_disks(LIVE)
    assert vda.target == "vda" and vda.kind == "file" and vda.driver_format == "qcow2"
    assert vda.source == "/srv/vms/d1.qcow2.hepinfra-backup-20261128T000000Z-0a0b0c.qcow2"
    assert vda.backing == "/srv/vms/d1.qcow2"
    assert vdb.source == "/srv/vms/d2.raw" and vdb.driver_format == "raw" and vdb.backing is None


def test_agent_state_comes_from_the_channel():
    assert agent_connected(LIVE) is False
    assert agent_connected(LIVE.replace("state='disconnected'", "state='connected'")) is True
    assert agent_connected("<domain><devices/></domain>") is False


def test_overlay_names_are_recognised_only_with_a_run_id():
    disk = Disk("vda", "file", "disk", "/srv/vms/d1.qcow2", "qcow2", False)
    run = new_run_id(datetime.datetime(2026, 11, 28, 9, 15, tzinfo=datetime.timezone.utc))
    assert run.startswith("20261128T091500Z-")
    path = overlay_path(disk, run, None)
    assert path.startswith("/srv/vms/d1.qcow2.hepinfra-backup-") and is_backup_overlay(path)
    assert overlay_path(disk, run, "/scratch").startswith("/scratch/d1.qcow2.hepinfra-backup-")
    for foreign in ("/srv/vms/d1.qcow2", "/srv/vms/x.hepinfra-backup-latest.qcow2", "/srv/vms/x.hepinfra-backup-.qcow2", None):
        assert not is_backup_overlay(foreign)


def test_select_disks_defaults_to_disk_devices_and_refuses_network_disks():
    disks = [
        Disk("vda", "file", "disk", "/a.qcow2", "qcow2", False),
        Disk("sda", "file", "cdrom", "/cd.iso", "raw", True),
        Disk("vdc", "network", "disk", "pool/image", "raw", False),
    ]
    chosen, problems = select_disks(disks, None)
    assert [d.target for d in chosen] == ["vda", "vdc"]
    assert problems == ["disk vdc is a network disk: only file and block disks can be backed up"]
    chosen, problems = select_disks(disks, ["vda", "sda", "vdz"])
    assert [d.target for d in chosen] == ["vda", "sda"] and problems == ["there is no disk vdz (disks: sda, vda, vdc)"]


def test_snapshot_xml_puts_overlays_only_where_asked():
    xml = snapshot_xml("s", parse_disks(LIVE), {"vda": "/o/vda.qcow2"})
    root = ElementTree.fromstring(xml)
    disks = {d.get("name"): d for d in root.findall("./disks/disk")}
    assert disks["vda"].get("snapshot") == "external" and disks["vda"].find("source").get("file") == "/o/vda.qcow2"
    assert disks["vdb"].get("snapshot") == "no"


def test_domain_selection_by_pattern_and_exclusion():
    names = ["condor-cm", "squid01", "squid02", "worker--a--1"]
    assert select_domains(names, ["*"], ["worker--*"]) == ["condor-cm", "squid01", "squid02"]
    assert select_domains(names, ["squid0?"], ["squid02"]) == ["squid01"]


def snap(sid, run, kind, path, time="2026-11-28T00:00:00Z", disk=None):
    tags = ["hepinfra-libvirt", "run=" + run, "kind=" + kind] + (["disk=" + disk] if disk else [])
    return {"id": sid, "short_id": sid[:8], "tags": tags, "paths": [path], "time": time}


R0, R1, R2, R3, R4, R5 = ("20261120T000000Z-00000%d" % i for i in range(6))
NOW = datetime.datetime(2026, 11, 28, tzinfo=datetime.timezone.utc)


def test_retention_forgets_whole_runs_and_old_interrupted_ones_but_not_the_current():
    plan = [{"keep": [snap("m3", R3, "manifest", "/d.manifest.json"), snap("m2", R2, "manifest", "/d.manifest.json")],
             "remove": [snap("m1", R1, "manifest", "/d.manifest.json")]}]
    young = "20261127T230000Z-aaaaaa"  # an hour old, no manifest: maybe a run still going on elsewhere
    snapshots = [
        snap("a1", R1, "disk", "/d.vda.raw", disk="vda"), snap("m1", R1, "manifest", "/d.manifest.json"),
        snap("a2", R2, "disk", "/d.vda.raw", disk="vda"), snap("m2", R2, "manifest", "/d.manifest.json"),
        snap("a3", R3, "disk", "/d.vda.raw", disk="vda"), snap("m3", R3, "manifest", "/d.manifest.json"),
        snap("x0", R0, "disk", "/d.vda.raw", disk="vda"),  # interrupted a week ago: no manifest
        snap("y0", young, "disk", "/d.vda.raw", disk="vda"),
        snap("a4", R4, "disk", "/d.vda.raw", disk="vda"),  # the run in progress
    ]
    assert runs_to_forget(plan, snapshots, current_run=R4, now=NOW) == ["a1", "m1", "x0"]
    assert kept_run_ids(plan) == {R2, R3}


def test_snapshots_of_a_domain_match_exact_names_only():
    assert snapshot_of_domain(snap("a", "r", "disk", "/web.vda.raw", disk="vda"), "web")
    assert snapshot_of_domain(snap("m", "r", "manifest", "/web.manifest.json"), "web")
    assert not snapshot_of_domain(snap("b", "r", "disk", "/web.prod.vda.raw", disk="vda"), "web")
    assert not snapshot_of_domain(snap("c", "r", "manifest", "/web.prod.manifest.json"), "web")
    assert disk_filename("web", "vda") == "web.vda.raw"


def test_pick_manifest_by_latest_run_or_id():
    manifests = [snap("aaaaaaaa11", "r1", "manifest", "/d.manifest.json", time="2026-11-27T00:00:00Z"),
                 snap("bbbbbbbb22", "r2", "manifest", "/d.manifest.json", time="2026-11-28T00:00:00Z")]
    assert pick_manifest(manifests, "latest")["id"] == "bbbbbbbb22"
    assert pick_manifest(manifests, "r1")["id"] == "aaaaaaaa11"
    assert pick_manifest(manifests, "aaaaaaaa")["id"] == "aaaaaaaa11"
    assert pick_manifest(manifests, "aaaa") is None  # too short to be an id prefix
    assert pick_manifest([], None) is None


def test_restore_xml_renames_points_at_volumes_and_drops_identity():
    xml = restore_xml(LIVE, "copy", {"vda": ("/pool/copy-vda.qcow2", "qcow2"), "vdb": ("/pool/copy-vdb.qcow2", "qcow2")},
                      keep_uuid=False, keep_macs=False)
    root = ElementTree.fromstring(xml)
    assert root.find("name").text == "copy" and root.find("uuid") is None
    for disk in root.findall("./devices/disk"):
        assert disk.find("backingStore") is None and disk.find("driver").get("type") == "qcow2"
        assert disk.find("source").get("file").startswith("/pool/copy-")
    assert root.findall("./devices/interface/mac") == []
    kept = ElementTree.fromstring(restore_xml(LIVE, "bk-fw1", {}, keep_uuid=True, keep_macs=True))
    assert kept.find("uuid") is not None


@pytest.mark.parametrize("tag, ok", [("site=a", True), ("nightly", True), ("a,b", False), ("run=x", False), ("domain=x", False), ("", False)])
def test_user_tags(tag, ok):
    assert (check_tag(tag) is None) is ok


def test_repository_urls_lose_their_credentials_in_messages():
    assert redact_url("rest:https://user:secret@backup.example.org/vms") == "rest:https://***@backup.example.org/vms"
    assert redact_url("s3:https://s3.example.org/bucket/x@y") == "s3:https://s3.example.org/bucket/x@y"
    assert redact_url("/srv/restic") == "/srv/restic"


def test_repository_urls_with_credentials_are_refused():
    check_repository("s3:https://s3.example.org/bucket/vms")
    with pytest.raises(HepinfraError, match="RESTIC_REST_USERNAME"):
        check_repository("rest:https://user:secret@backup.example.org/vms")


def test_restore_xml_drops_the_firmware_variables_of_a_copy():
    xml = LIVE.replace("<os>", "<os><nvram>/var/lib/libvirt/qemu/nvram/bk-fw1_VARS.fd</nvram>", 1)
    assert ElementTree.fromstring(restore_xml(xml, "copy", {}, keep_uuid=False, keep_macs=False)).find("./os/nvram") is None
    assert ElementTree.fromstring(restore_xml(xml, "bk-fw1", {}, keep_uuid=True, keep_macs=True)).find("./os/nvram") is not None


def test_run_tags_name_the_domain_unless_restic_would_split_it():
    assert run_tags("r", "disk", ["disk=vda"], domain="cm") == ["hepinfra-libvirt", "run=r", "kind=disk", "domain=cm", "disk=vda"]
    assert "domain=a,b" not in run_tags("r", "manifest", domain="a,b")
