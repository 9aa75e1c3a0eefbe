"""hepinfra.cloud.image and image_info against a real Keystone + two Glance regions and real libvirt pools."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys

from cloudtools import glance_download, glance_images, glance_raw, os_cloud, pool_volumes, same_guest_content, sha256_of
from hepinfra_testbed import guest, openstack
from hepinfra_testbed.common import run

IMAGE = "hepinfra.cloud.image"
INFO = "hepinfra.cloud.image_info"


def four_clouds(cloud_services, pools):
    """alpha (Glance RegionOne, qcow2), beta (Glance RegionTwo, raw only), hv-a (pool, qcow2), hv-b (pool, raw only)."""
    hv_a, path_a = pools("hv-a")
    hv_b, path_b = pools("hv-b", image_formats=["raw"])
    clouds = [
        os_cloud(cloud_services, "alpha"),
        os_cloud(cloud_services, "beta", image_formats=["raw"]),
        hv_a,
        hv_b,
    ]
    return clouds, {"hv-a": path_a, "hv-b": path_b}


def test_first_upload_rerun_change_and_retention(cloud_services, pools, image_file, run_module, tmp_path):
    clouds, paths = four_clouds(cloud_services, pools)
    first_src = image_file("v1", 0x11)
    name = "worker-" + tmp_path.name[-8:]
    args = {"clouds": clouds, "name": name, "src": str(first_src), "keep": 2, "checksum_cache": str(tmp_path / "sums.json"),
            "properties": {"os_distro": "debian"}, "tags": ["hepinfra-worker"]}

    first = run_module(IMAGE, args)
    assert not first.failed, first.msg
    result = first.result["clouds"]
    assert {c: r["action"] for c, r in result.items()} == dict.fromkeys(["alpha", "beta", "hv-a", "hv-b"], "upload")
    # every cloud has the image's content, in the format it takes
    assert result["alpha"]["format"] == "qcow2" and result["alpha"]["converted_from"] is None
    assert result["beta"]["format"] == "raw" and result["beta"]["converted_from"] == "qcow2"
    alpha = glance_images(cloud_services, "alpha", name)
    assert [i.name for i in alpha] == [name]
    assert alpha[0].properties["hepinfra_sha256"] == sha256_of(first_src)
    raw = glance_raw(cloud_services, "alpha", alpha[0].id)
    assert raw["os_distro"] == "debian" and raw["tags"] == ["hepinfra-worker"] and raw["status"] == "active"
    assert same_guest_content(first_src, glance_download(cloud_services, "alpha", alpha[0].id, tmp_path / "a.img"))
    beta = glance_images(cloud_services, "beta", name)
    assert [(i.name, i.disk_format) for i in beta] == [(name, "raw")]
    assert same_guest_content(first_src, glance_download(cloud_services, "beta", beta[0].id, tmp_path / "b.img"))
    for cloud, fmt in (("hv-a", "qcow2"), ("hv-b", "raw")):
        volume = result[cloud]["id"]
        assert volume.endswith("." + fmt) and pool_volumes(paths[cloud]) == [volume]
        assert same_guest_content(first_src, paths[cloud] / volume)
    assert result["alpha"]["bytes_sent"] == first_src.stat().st_size

    # the same again: nothing changes, nothing is sent
    again = run_module(IMAGE, args)
    assert not again.failed, again.msg
    assert again.result["changed"] is False
    assert first.result["image"]["checksum_cached"] is False and again.result["image"]["checksum_cached"] is True
    assert {c: (r["action"], r["bytes_sent"]) for c, r in again.result["clouds"].items()} == \
        dict.fromkeys(["alpha", "beta", "hv-a", "hv-b"], ("none", 0))

    # new content: check mode says what would happen and does nothing
    second_src = image_file("v2", 0x22)
    preview = run_module(IMAGE, dict(args, src=str(second_src)), check_mode=True, diff=True)
    assert preview.result["changed"] is True
    assert {r["action"] for r in preview.result["clouds"].values()} == {"upload"}
    assert {r["version"] for r in preview.result["clouds"].values()} == {None}
    assert preview.result["diff"]["before"]["alpha"]["sha256"] == sha256_of(first_src)
    assert preview.result["diff"]["after"]["alpha"] == {"current": "(a new version)", "sha256": sha256_of(second_src)}
    assert len(glance_images(cloud_services, "alpha", name)) == 1 and len(pool_volumes(paths["hv-a"])) == 1

    second = run_module(IMAGE, dict(args, src=str(second_src)))
    assert not second.failed, second.msg
    alpha = glance_images(cloud_services, "alpha", name)
    v1, v2 = first.result["clouds"]["alpha"]["version"], second.result["clouds"]["alpha"]["version"]
    assert [i.name for i in alpha] == [name, f"{name}-{v1}"]  # the old version renamed aside
    assert alpha[0].properties["hepinfra_sha256"] == sha256_of(second_src)

    # an instance on hv-a uses the first version: a worker disk backed by it
    first_volume = paths["hv-a"] / first.result["clouds"]["hv-a"]["id"]
    run(["virsh", "-c", guest.URI, "vol-create-as", clouds[2]["libvirt"]["pool"], "worker-disk.qcow2", "1G",
         "--format", "qcow2", "--backing-vol", str(first_volume), "--backing-vol-format", "qcow2"])

    # a defined (shut off) domain on hv-b has the first version as a pool volume disk
    hv_b_first = first.result["clouds"]["hv-b"]["id"]
    domain = f"{guest.PREFIX}-img-user-{tmp_path.name[-6:]}"
    xml = (f"<domain type='qemu'><name>{domain}</name><memory unit='MiB'>64</memory><os><type>hvm</type></os>"
           f"<devices><disk type='volume' device='disk'><driver name='qemu' type='raw'/>"
           f"<source pool='{clouds[3]['libvirt']['pool']}' volume='{hv_b_first}'/><target dev='vda'/></disk>"
           f"</devices></domain>")
    (tmp_path / "domain.xml").write_text(xml)
    run(["virsh", "-c", guest.URI, "define", tmp_path / "domain.xml"])
    try:
        third_src = image_file("v3", 0x33)
        third = run_module(IMAGE, dict(args, src=str(third_src)))
    finally:
        run(["virsh", "-c", guest.URI, "undefine", domain])
    assert not third.failed, third.msg
    res = third.result["clouds"]
    # keep=2: the oldest version goes where nothing uses it, and stays where a disk is backed by it
    assert res["alpha"]["deleted"] == [f"{name}-{v1}"] and res["beta"]["deleted"] == [f"{name}-{v1}"]
    assert [i.name for i in glance_images(cloud_services, "alpha", name)] == [name, f"{name}-{v2}"]
    assert res["hv-a"]["deleted"] == [] and res["hv-a"]["kept_in_use"] == [first_volume.name]
    assert first_volume.exists()
    assert res["hv-b"]["deleted"] == [] and res["hv-b"]["kept_in_use"] == [hv_b_first]
    assert len(pool_volumes(paths["hv-b"])) == 3

    # back to the second content: made current again without sending it
    rollback = run_module(IMAGE, dict(args, src=str(second_src)))
    assert not rollback.failed, rollback.msg
    assert {c: (r["action"], r["bytes_sent"]) for c, r in rollback.result["clouds"].items()} == \
        dict.fromkeys(["alpha", "beta", "hv-a", "hv-b"], ("restore", 0))
    alpha = glance_images(cloud_services, "alpha", name)
    current = [i for i in alpha if i.name == name]
    assert len(current) == 1 and current[0].properties["hepinfra_sha256"] == sha256_of(second_src)
    newest = rollback.result["clouds"]["hv-b"]["id"]
    assert same_guest_content(second_src, paths["hv-b"] / newest)
    # the restored version carries the task's metadata: the next run has nothing to do
    settled = run_module(IMAGE, dict(args, src=str(second_src)))
    assert settled.result["changed"] is False, settled.result["clouds"]

    # the matrix: every cloud's current version of the name
    info = run_module(INFO, {"clouds": clouds, "name": name})
    assert not info.failed, info.msg
    matrix = info.result["matrix"][name]
    assert set(matrix) == {"alpha", "beta", "hv-a", "hv-b"}
    assert matrix["alpha"]["sha256"] == sha256_of(second_src)
    assert matrix["hv-b"]["sha256"] == sha256_of(second_src)[:12]
    assert all(entry["ok"] for entry in info.result["clouds"].values())


def test_metadata_updated_in_place_with_diff(cloud_services, image_file, run_module, tmp_path):
    clouds = [os_cloud(cloud_services, "alpha")]
    src = image_file("meta", 0x44)
    name = "meta-" + tmp_path.name[-8:]
    base = {"clouds": clouds, "name": name, "src": str(src), "tags": ["a", "b"], "properties": {"site": "one"}}
    assert not run_module(IMAGE, base).failed
    image_id = glance_images(cloud_services, "alpha", name)[0].id

    update = run_module(IMAGE, dict(base, tags=["b", "c"], properties={"site": "two"}, min_ram=2048), diff=True)
    assert not update.failed, update.msg
    alpha = update.result["clouds"]["alpha"]
    assert alpha["action"] == "none" and alpha["bytes_sent"] == 0 and alpha["changed"] is True
    assert alpha["updated"] == ["min_ram", "properties.site", "tags"]
    diff = update.result["diff"]
    assert diff["before"]["alpha"]["tags"] == ["a", "b"] and diff["after"]["alpha"]["tags"] == ["b", "c"]
    image = glance_images(cloud_services, "alpha", name)[0]
    assert image.id == image_id  # updated in place, not uploaded again
    assert sorted(image.tags) == ["b", "c"] and image.properties["site"] == "two" and image.min_ram == 2048
    assert run_module(IMAGE, dict(base, tags=["b", "c"], properties={"site": "two"}, min_ram=2048)).result["changed"] is False

    # new content, the task naming no metadata: the new version takes over the current one's
    newer = run_module(IMAGE, {"clouds": clouds, "name": name, "src": str(image_file("meta2", 0x45)),
                               "visibility": "private"})
    assert not newer.failed, newer.msg
    current = glance_raw(cloud_services, "alpha", newer.result["clouds"]["alpha"]["id"])
    assert current["name"] == name and current["id"] != image_id
    assert sorted(current["tags"]) == ["b", "c"] and current["site"] == "two" and current["min_ram"] == 2048
    assert current["visibility"] == "private"
    refused = run_module(IMAGE, dict(base, properties={"hepinfra_sha256": "x", "visibility": "public"}))
    assert refused.failed and "properties may not set hepinfra_sha256, visibility" in refused.msg


def test_a_source_other_than_hashed_is_never_stored(cloud_services, pools, image_file, run_module, tmp_path):
    """A stale checksum (here: a cache entry for other content) is caught by the upload's own read."""
    hv_a, path_a = pools("hv-a")
    clouds = [os_cloud(cloud_services, "alpha"), hv_a]
    name = "stale-" + tmp_path.name[-8:]
    src = image_file("stale", 0x61)
    cache = tmp_path / "sums.json"
    first = run_module(IMAGE, {"clouds": clouds, "name": name, "src": str(src), "checksum_cache": str(cache)})
    assert not first.failed, first.msg
    entries = json.loads(cache.read_text())
    (entry,) = entries.values()
    entry["sha256"] = "0" * 64  # what a wrong cache (or a file rewritten in place) looks like
    cache.write_text(json.dumps(entries))
    outcome = run_module(IMAGE, {"clouds": clouds, "name": name, "src": str(src), "checksum_cache": str(cache)})
    assert outcome.failed and "failed on 2 of 2 clouds" in outcome.msg
    assert outcome.msg.count("the file changed (or the checksum cache is stale)") == 2, outcome.msg
    # nothing of the refused upload is left, and the good version is still current
    assert [i.name for i in glance_images(cloud_services, "alpha", name)] == [name]
    assert pool_volumes(path_a) == [first.result["clouds"]["hv-a"]["id"]]


def test_one_cloud_down_the_others_succeed(cloud_services, pools, image_file, run_module, tmp_path):
    hv_a, path_a = pools("hv-a")
    clouds = [os_cloud(cloud_services, "alpha"), os_cloud(cloud_services, "beta"), hv_a]
    src = image_file("down", 0x55)
    name = "down-" + tmp_path.name[-8:]
    with openstack.glance_stopped("RegionTwo"):
        outcome = run_module(IMAGE, {"clouds": clouds, "name": name, "src": str(src)})
        info = run_module(INFO, {"clouds": clouds, "name": name})
    assert outcome.failed
    assert "failed on 1 of 3 clouds" in outcome.msg and "cloud beta" in outcome.msg
    res = outcome.result["clouds"]
    assert res["beta"]["failed"] is True and res["beta"]["error"]
    assert res["alpha"]["action"] == "upload" and not res["alpha"]["failed"]
    assert res["hv-a"]["action"] == "upload" and len(pool_volumes(path_a)) == 1
    assert [i.name for i in glance_images(cloud_services, "alpha", name)] == [name]
    # image_info does not fail for a cloud that does not answer, and says which one it is
    assert not info.failed, info.msg
    assert info.result["clouds"]["beta"]["ok"] is False and info.result["clouds"]["alpha"]["ok"] is True
    assert info.result["matrix"][name]["beta"] is None

    # back up: the next run puts the image on beta only
    after = run_module(IMAGE, {"clouds": clouds, "name": name, "src": str(src)})
    assert not after.failed, after.msg
    assert {c: r["action"] for c, r in after.result["clouds"].items()} == {"alpha": "none", "beta": "upload", "hv-a": "none"}


def test_bad_credentials_fail_clearly_without_the_secret(cloud_services, pools, image_file, run_module, tmp_path):
    hv_a, _path = pools("hv-a")
    wrong = os_cloud(cloud_services, "alpha", name="wrong")
    wrong["openstack"]["auth"]["password"] = "not-the-password-7f3a"
    src = image_file("creds", 0x66)
    outcome = run_module(IMAGE, {"clouds": [wrong, hv_a], "name": "creds-" + tmp_path.name[-8:], "src": str(src)})
    assert outcome.failed
    assert "cloud wrong" in outcome.msg and "authentication failed" in outcome.msg
    assert outcome.result["clouds"]["hv-a"]["action"] == "upload"
    assert "not-the-password-7f3a" not in outcome.output and "not-the-password-7f3a" not in str(outcome.result)


def test_application_credential_close_to_expiry_warns(cloud_services, image_file, run_module, tmp_path):
    expires = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=5)
    credential = openstack.application_credential("alpha", "hepinfra-" + tmp_path.name[-8:], expires_at=expires)
    cloud = {"name": "appcred", "type": "openstack", "credential_warning_days": 14,
             "openstack": {"region_name": "RegionOne", "auth": {
                 "auth_url": cloud_services.auth_url, "application_credential_id": credential["id"],
                 "application_credential_secret": credential["secret"]}}}
    src = image_file("appcred", 0x77)
    outcome = run_module(IMAGE, {"clouds": [cloud], "name": "appcred-" + tmp_path.name[-8:], "src": str(src)})
    assert not outcome.failed, outcome.msg
    warnings = outcome.result["clouds"]["appcred"]["warnings"]
    assert len(warnings) == 1 and ("expires in 4.9 days" in warnings[0] or "expires in 5.0 days" in warnings[0])
    assert "cloud appcred: its application credential expires" in outcome.output  # shown as a task warning too
    assert credential["secret"] not in outcome.output
    # the same credential with the default 30-day window: still a warning; with 3 days: none
    quiet = dict(cloud, credential_warning_days=3)
    again = run_module(IMAGE, {"clouds": [quiet], "name": "appcred-" + tmp_path.name[-8:], "src": str(src)})
    assert again.result["clouds"]["appcred"]["warnings"] == []


def test_interrupted_libvirt_upload_is_cleaned_and_redone(cloud_services, pools, image_file, run_module, tmp_path):
    hv_a, path_a = pools("hv-a")
    src = image_file("cut", 0x12)
    name = "cut-" + tmp_path.name[-8:]
    pool = hv_a["libvirt"]["pool"]
    # what a killed run leaves: a volume with the right name, half written, and its marker
    sha = sha256_of(src)
    stale = f"{name}-20260101T000000Z-{sha[:12]}.qcow2"
    run(["virsh", "-c", guest.URI, "vol-create-as", pool, stale, "1M", "--format", "raw"])
    run(["virsh", "-c", guest.URI, "vol-create-as", pool, stale + ".uploading", "0", "--format", "raw"])
    outcome = run_module(IMAGE, {"clouds": [hv_a], "name": name, "src": str(src)})
    assert not outcome.failed, outcome.msg
    res = outcome.result["clouds"]["hv-a"]
    assert res["action"] == "upload" and stale in res["deleted"]
    assert pool_volumes(path_a) == [res["id"]]
    assert same_guest_content(src, path_a / res["id"])


def test_absent_deletes_unused_versions(cloud_services, pools, image_file, run_module, tmp_path):
    hv_a, path_a = pools("hv-a")
    clouds = [os_cloud(cloud_services, "alpha"), hv_a]
    name = "gone-" + tmp_path.name[-8:]
    for label, pattern in (("g1", 0x21), ("g2", 0x22)):
        assert not run_module(IMAGE, {"clouds": clouds, "name": name, "src": str(image_file(label, pattern))}).failed
    assert len(glance_images(cloud_services, "alpha", name)) == 2 and len(pool_volumes(path_a)) == 2
    gone = run_module(IMAGE, {"clouds": clouds, "name": name, "state": "absent"})
    assert not gone.failed, gone.msg
    assert gone.result["changed"] is True
    assert glance_images(cloud_services, "alpha", name) == [] and pool_volumes(path_a) == []
    assert run_module(IMAGE, {"clouds": clouds, "name": name, "state": "absent"}).result["changed"] is False


def test_bad_cloud_definitions_name_the_field(run_module, image_file):
    src = image_file("bad", 0x01)
    bad = [
        {"name": "os1", "type": "openstack"},
        {"name": "os2", "type": "openstack", "openstack": {"cloud": "x", "auth": {"auth_url": "http://k/v3"}}},
        {"name": "lv", "type": "libvirt", "libvirt": {"uri": "qemu:///system", "pool": "p"}, "limits": {"cores": -1}},
        {"name": "lv", "type": "libvirt", "libvirt": {"uri": "qemu:///system", "pool": "p"}},
    ]
    outcome = run_module(IMAGE, {"clouds": bad, "name": "x", "src": str(src)})
    assert outcome.failed
    for expected in ("clouds[0] (os1): type openstack needs an 'openstack' section",
                     "clouds[1] (os2): openstack needs exactly one of 'cloud'",
                     "clouds[2] (lv): limits.cores must be 0 or more",
                     "clouds[3] (lv): the name lv is used twice"):
        assert expected in outcome.msg, outcome.msg
    typo = run_module(IMAGE, {"clouds": [{"name": "a", "type": "openstak"}], "name": "x", "src": str(src)})
    assert typo.failed and "type must be one of: openstack, libvirt, got: openstak" in typo.msg
    unknown = run_module(IMAGE, {"clouds": bad[3:], "targets": ["nope"], "name": "x", "src": str(src)})
    assert unknown.failed and "no cloud named nope" in unknown.msg
    not_image = src.with_suffix(".txt")
    not_image.write_text("not an image")
    wrong = run_module(IMAGE, {"clouds": bad[3:], "name": "x", "src": str(not_image), "disk_format": "qcow2"})
    assert wrong.failed and "is raw, not qcow2" in wrong.msg


def test_images_playbook_distributes_and_shows_the_matrix(cloud_services, pools, image_file, tmp_path):
    """playbooks/images.yml as a site runs it: every image on every cloud, the matrix, a failure at the end."""
    hv_a, path_a = pools("hv-a")
    clouds = [os_cloud(cloud_services, "alpha"), hv_a]
    tag = tmp_path.name[-8:]
    images = [{"name": f"pb-one-{tag}", "src": str(image_file("pb1", 0x71)), "tags": ["hepinfra-worker"]},
              {"name": f"pb-two-{tag}", "src": str(image_file("pb2", 0x72)), "targets": ["hv-a"]}]
    extra = tmp_path / "vars.json"
    extra.write_text(json.dumps({"hepinfra_clouds": clouds, "images": images}))

    def play(*more: str):
        return subprocess.run(["ansible-playbook", "-i", "localhost,", "-c", "local", "hepinfra.cloud.images",
                               "-e", f"@{extra}", *more], capture_output=True, text=True, check=False,
                              env=dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_PYTHON_INTERPRETER=sys.executable))

    first = play()
    assert first.returncode == 0, first.stdout + first.stderr
    assert [i.name for i in glance_images(cloud_services, "alpha", f"pb-one-{tag}")] == [f"pb-one-{tag}"]
    assert glance_images(cloud_services, "alpha", f"pb-two-{tag}") == []  # its targets leave alpha out
    assert len(pool_volumes(path_a)) == 2
    assert f"pb-one-{tag}: alpha=2" in first.stdout and f"pb-two-{tag}: alpha=missing, hv-a=2" in first.stdout
    again = play()
    assert again.returncode == 0 and "changed=0" in again.stdout, again.stdout

    with openstack.glance_stopped("RegionOne"):
        down = play("-e", json.dumps({"images": images + [{"name": f"pb-three-{tag}", "src": str(image_file("pb3", 0x73))}]}))
    assert down.returncode != 0
    assert "Fail when an image failed on a cloud" in down.stdout and "cloud alpha" in down.stdout
    assert len(pool_volumes(path_a)) == 3  # the other cloud got the new image all the same
    assert "alpha: " in down.stdout  # the cloud that did not answer is named under the matrix
