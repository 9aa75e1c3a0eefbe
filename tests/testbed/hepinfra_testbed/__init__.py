"""The hepinfra.cloud testbed: real Debian test hosts (podman + systemd) and libvirt/QEMU guests."""
