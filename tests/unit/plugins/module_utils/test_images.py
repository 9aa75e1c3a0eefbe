# -*- coding: utf-8 -*-
# Copyright: hepinfra.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import hashlib
import threading

import pytest

from ansible_collections.hepinfra.cloud.plugins.module_utils import _images

SHA_A = hashlib.sha256(b"a").hexdigest()
SHA_B = hashlib.sha256(b"b").hexdigest()
SHA_C = hashlib.sha256(b"c").hexdigest()


def version(ver, sha, current=False, complete=True, in_use=False, protected=False):
    return _images.Version(ref="id-" + ver, name="img-" + ver, version=ver, sha256=sha, format="qcow2", size=1,
                           current=current, complete=complete, in_use=in_use, protected=protected)


def test_same_content_as_current_needs_nothing():
    versions = [version("20261101T000000Z", SHA_A, current=True), version("20261001T000000Z", SHA_B)]
    assert _images.plan_content(versions, SHA_A) == ("none", versions[0])


def test_content_of_an_older_version_is_restored_not_uploaded():
    versions = [version("20261101T000000Z", SHA_A, current=True), version("20261001T000000Z", SHA_B)]
    assert _images.plan_content(versions, SHA_B) == ("restore", versions[1])


def test_new_content_or_an_incomplete_match_is_uploaded():
    versions = [version("20261101T000000Z", SHA_A, current=True), version("20261001T000000Z", SHA_B, complete=False)]
    assert _images.plan_content(versions, SHA_B) == ("upload", None)
    assert _images.plan_content([], SHA_C) == ("upload", None)


def test_libvirt_short_checksums_match_the_full_one():
    assert _images.sha_matches(SHA_A[:12], SHA_A)
    assert not _images.sha_matches(SHA_A[:11], SHA_A)
    assert not _images.sha_matches("", SHA_A)


def test_retention_keeps_newest_and_what_is_used():
    versions = [
        version("20261104T000000Z", SHA_A, current=True),
        version("20261103T000000Z", SHA_B),
        version("20261102T000000Z", SHA_C, in_use=True),
        version("20261101T000000Z", SHA_C, protected=True),
        version("20261031T000000Z", SHA_C, in_use=None),
        version("20261030T000000Z", SHA_C),
        version("20261105T000000Z", SHA_C, complete=False),
    ]
    delete, held = _images.plan_retention(versions, keep=2)
    assert [v.version for v in delete] == ["20261105T000000Z", "20261030T000000Z"]
    assert [v.version for v in held] == ["20261102T000000Z", "20261101T000000Z", "20261031T000000Z"]


def test_retention_never_deletes_the_current_version_even_if_old():
    versions = [version("20260101T000000Z", SHA_A, current=True), version("20261101T000000Z", SHA_B),
                version("20261102T000000Z", SHA_C)]
    delete, _held = _images.plan_retention(versions, keep=1)
    assert sorted(v.version for v in delete) == ["20261101T000000Z", "20261102T000000Z"]


def test_volume_names_round_trip():
    name = _images.volume_name("worker-el9", "20261128T120000Z", SHA_A, "qcow2")
    assert name == "worker-el9-20261128T120000Z-%s.qcow2" % SHA_A[:12]
    assert _images.parse_volume_name(name) == ("worker-el9", "20261128T120000Z", SHA_A[:12], "qcow2")
    assert _images.parse_volume_name(name + ".uploading") is None
    assert _images.parse_volume_name("worker-el9.qcow2") is None


def test_disk_references_follow_disks_pool_volumes_network_disks_and_backing_chains():
    domain = ("<domain><devices><disk type='file'><source file='/p/a.qcow2'/>"
              "<backingStore type='file'><source file='/p/base.qcow2'/></backingStore></disk>"
              "<disk type='volume'><source pool='images' volume='w-20261101T000000Z-0123456789ab.qcow2'/></disk>"
              "<disk type='network'><source protocol='rbd' name='rbd/img-1'/></disk></devices></domain>")
    volume = "<volume><target><path>/p/w.qcow2</path></target><backingStore><path>/p/img.qcow2</path></backingStore></volume>"
    paths, volumes = _images.disk_references([domain], [volume])
    assert paths == {"/p/a.qcow2", "/p/base.qcow2", "/p/img.qcow2", "rbd/img-1"}
    assert volumes == {("images", "w-20261101T000000Z-0123456789ab.qcow2")}


def test_broadcast_reads_once_for_every_subscriber_and_survives_a_failed_one(tmp_path):
    data = bytes(range(256)) * (3 * _images.CHUNK // 256 + 7)
    path = tmp_path / "src"
    path.write_bytes(data)
    broadcast = _images.Broadcast(str(path), expected_size=len(data), depth=1)
    good, bad = broadcast.subscribe(), broadcast.subscribe()
    received = []

    def consume():
        received.append(b"".join(good))

    def fail_after_one():
        for _chunk in bad:
            break
        bad.close()

    threads = [threading.Thread(target=consume), threading.Thread(target=fail_after_one)]
    for thread in threads:
        thread.start()
    broadcast.start()
    for thread in threads:
        thread.join(timeout=30)
        assert not thread.is_alive()
    assert received == [data]
    assert broadcast.bytes_read == len(data)
    assert broadcast.outcome(timeout=5) == hashlib.md5(data).hexdigest()


def test_checksum_cache_skips_unchanged_files_and_notices_changes(tmp_path):
    source = tmp_path / "image.raw"
    source.write_bytes(b"one" * 1000)
    cache = str(tmp_path / "cache" / "sums.json")
    first = _images.cached_sha256(str(source), cache)
    assert first == (hashlib.sha256(b"one" * 1000).hexdigest(), False)
    assert _images.cached_sha256(str(source), cache) == (first[0], True)
    with open(source, "r+b") as handle:  # same size, new content
        handle.write(b"two")
    changed = _images.cached_sha256(str(source), cache)
    assert changed == (hashlib.sha256(b"two" + b"one" * 999).hexdigest(), False)
    assert _images.cached_sha256(str(source), None) == (changed[0], False)


def test_a_broken_checksum_cache_is_ignored(tmp_path):
    source = tmp_path / "image.raw"
    source.write_bytes(b"x")
    cache = tmp_path / "sums.json"
    cache.write_text("{not json")
    assert _images.cached_sha256(str(source), str(cache)) == (hashlib.sha256(b"x").hexdigest(), False)
    assert _images.cached_sha256(str(source), str(cache))[1] is True


def consume(sub, into):
    try:
        into.append(sum(len(chunk) for chunk in sub))
    except _images.HepinfraError as exc:
        into.append(exc)


def test_broadcast_md5_is_of_the_whole_file(tmp_path):
    path = tmp_path / "src"
    path.write_bytes(b"abc" * 5000000)
    broadcast = _images.Broadcast(str(path), expected_size=15000000,
                                  expected_sha256=hashlib.sha256(b"abc" * 5000000).hexdigest())
    sub = broadcast.subscribe()
    broadcast.start()
    assert sum(len(chunk) for chunk in sub) == 15000000
    assert broadcast.outcome(timeout=30) == hashlib.md5(b"abc" * 5000000).hexdigest()


def test_broadcast_refuses_content_other_than_hashed(tmp_path):
    path = tmp_path / "src"
    path.write_bytes(b"new content")
    broadcast = _images.Broadcast(str(path), expected_size=11, expected_sha256=hashlib.sha256(b"old content").hexdigest())
    sub = broadcast.subscribe()
    broadcast.start()
    assert b"".join(sub) == b"new content"  # the bytes flow, but the upload must not commit them
    with pytest.raises(_images.HepinfraError, match="the file changed"):
        broadcast.outcome(timeout=5)


def test_broadcast_refuses_a_short_read(tmp_path):
    path = tmp_path / "src"
    path.write_bytes(b"x" * 100)
    broadcast = _images.Broadcast(str(path), expected_size=200)
    sub = broadcast.subscribe()
    broadcast.start()
    list(sub)
    with pytest.raises(_images.HepinfraError, match="read 100 bytes where 200 were expected"):
        broadcast.outcome(timeout=5)


def test_broadcast_drops_a_stalled_upload_and_feeds_the_others(tmp_path):
    data = b"y" * (_images.CHUNK * 6)
    path = tmp_path / "src"
    path.write_bytes(data)
    broadcast = _images.Broadcast(str(path), expected_size=len(data), depth=1, stall_timeout=1)
    good, stuck = broadcast.subscribe(), broadcast.subscribe()
    results = []
    thread = threading.Thread(target=consume, args=(good, results))
    thread.start()
    broadcast.start()
    thread.join(timeout=60)
    assert results == [len(data)]
    assert stuck.stalled and not stuck.alive
    with pytest.raises(_images.HepinfraError, match="took no data for 1 s"):
        list(stuck)
