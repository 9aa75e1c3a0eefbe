"""Command line of the testbed: python -m hepinfra_testbed <command>."""

from __future__ import annotations

import argparse
import sys

from . import guest, images, netbox, openstack, podman, pool, storage
from .common import TestbedError, log, release_service_ports


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hepinfra-testbed", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("conf", help="write the containers.conf podman needs here and print its path")
    p_images = sub.add_parser("images", help="build (or reuse) and import host images")
    p_images.add_argument("names", nargs="*", default=sorted(images.HOSTS))
    p_up = sub.add_parser("host-up", help="start a systemd test host")
    p_up.add_argument("name")
    p_up.add_argument("--image", default="trixie", choices=sorted(images.HOSTS))
    p_up.add_argument("--network", default="hepinfra-tb-net")
    p_down = sub.add_parser("host-down", help="remove a test host")
    p_down.add_argument("name")
    sub.add_parser("teardown", help="remove everything the testbed created and stop the services it started")

    args = parser.parse_args(argv)
    try:
        if args.command == "conf":
            print(podman.containers_conf())
        elif args.command == "images":
            for name in args.names:
                print(images.podman_image(name))
        elif args.command == "host-up":
            print(podman.host_up(args.name, image=args.image, network=args.network))
        elif args.command == "host-down":
            podman.host_down(args.name)
        elif args.command == "teardown":
            if pool.pool_down():                 # before the hosts and libvirt: its container and network
                log("removed the HTCondor pool")
            for line in podman.teardown() + guest.teardown():
                log(f"removed {line}")
            for service, stop in (("OpenStack", openstack.down), ("the S3 server", storage.s3_down),
                                  ("NetBox", netbox.down)):
                if stop():
                    log(f"stopped {service}")
            if release_service_ports():
                log("gave ports 58000-58999 back to the ephemeral range")
    except TestbedError as exc:
        print(f"testbed: {exc}", file=sys.stderr)
        return 1
    return 0
