"""The NetBox data the CMDB inventory tests read, created through the real API (pynetbox).

Small on purpose, but with every shape the inventory handles: devices and VMs, both IP
families and only one of them, DNS names, racks and locations, tags, custom fields of
several types, a device without a name, a device and a VM with the same name, statuses.
Created in a fixed order on a fresh database, so ids are the same on every run.
"""

from __future__ import annotations

import pynetbox


def seed(url: str, token: str) -> None:
    nb = pynetbox.api(url, token=token)
    dcim, ipam, virt, extras, tenancy = nb.dcim, nb.ipam, nb.virtualization, nb.extras, nb.tenancy

    for name, kind in (("batch_system", "text"), ("admin_user", "text"), ("mgmt_address", "text"), ("gpus", "integer"), ("experiments", "multiselect")):
        spec = {"name": name, "type": kind, "object_types": ["dcim.device", "virtualization.virtualmachine"]}
        if kind == "multiselect":
            choices = [["atlas", "ATLAS"], ["belle2", "Belle II"], ["lsst", "LSST"]]
            choice_set = extras.custom_field_choice_sets.create(name="experiments", extra_choices=choices)
            spec["choice_set"] = choice_set.id
        extras.custom_fields.create(**spec)

    tags = {slug: extras.tags.create(name=slug.upper(), slug=slug) for slug in ("atlas", "belle2", "htcondor-worker")}
    cern = dcim.sites.create(name="CERN", slug="cern", status="active")
    desy = dcim.sites.create(name="DESY", slug="desy", status="active")
    b513 = dcim.locations.create(name="B513", slug="b513", site=cern.id)
    rack = dcim.racks.create(name="R1-01", site=cern.id, location=b513.id, status="active")
    maker = dcim.manufacturers.create(name="Supermicro", slug="supermicro")
    model = dcim.device_types.create(manufacturer=maker.id, model="SYS-6029", slug="sys-6029")
    squid_role = dcim.device_roles.create(name="Squid", slug="squid", vm_role=False)
    storage_role = dcim.device_roles.create(name="Storage", slug="storage", vm_role=False)
    worker_role = dcim.device_roles.create(name="Worker", slug="worker", vm_role=True)
    debian = dcim.platforms.create(name="Debian 13", slug="debian-13")
    atlas = tenancy.tenants.create(name="ATLAS", slug="atlas")
    extras.config_contexts.create(name="cern-defaults", weight=100, sites=[cern.id], data={"ntp_servers": ["ntp1.cern.example"], "squid_port": 3128})
    cluster_type = virt.cluster_types.create(name="OpenStack", slug="openstack")
    cloud = virt.clusters.create(name="cern-openstack", type=cluster_type.id, scope_type="dcim.site", scope_id=cern.id)

    def device(name, site, role, status="active", **extra):
        return dcim.devices.create(name=name, device_type=model.id, role=role.id, site=site.id, status=status, **extra)

    def primary(obj, kind, ip4=None, ip6=None, dns6=None):
        if kind == "device":
            iface = dcim.interfaces.create(device=obj.id, name="eth0", type="25gbase-x-sfp28")
            assigned = {"assigned_object_type": "dcim.interface", "assigned_object_id": iface.id}
        else:
            iface = virt.interfaces.create(virtual_machine=obj.id, name="eth0")
            assigned = {"assigned_object_type": "virtualization.vminterface", "assigned_object_id": iface.id}
        update = {}
        if ip4:
            update["primary_ip4"] = ipam.ip_addresses.create(address=ip4, status="active", **assigned).id
        if ip6:
            update["primary_ip6"] = ipam.ip_addresses.create(address=ip6, status="active", dns_name=dns6 or "", **assigned).id
        obj.update(update)

    squid01 = device("squid01", cern, squid_role, platform=debian.id, tenant=atlas.id, rack=rack.id, location=b513.id,
                     position=10, face="front", serial="SQ-0001",
                     tags=[tags["atlas"].id], custom_fields={"batch_system": "htcondor", "admin_user": "squidadm", "experiments": ["atlas", "belle2"]})
    primary(squid01, "device", ip4="192.0.2.11/24", ip6="2001:db8::11/64", dns6="squid01.cern.example")
    storage01 = device("storage01", desy, storage_role, status="planned", tags=[tags["belle2"].id],
                       custom_fields={"mgmt_address": "storage01-ipmi.desy.example", "gpus": 0})
    primary(storage01, "device", ip6="2001:db8:1::21/64", dns6="storage01.desy.example")
    device(None, desy, storage_role, status="offline")  # unnamed: left out with a warning
    node01 = device("node01", cern, squid_role, status="active", platform=debian.id)
    primary(node01, "device", ip4="192.0.2.31/24")

    def vm(name, status="active", **extra):
        return virt.virtual_machines.create(name=name, cluster=cloud.id, site=cern.id, status=status, **extra)

    worker_a = vm("worker-a", role=worker_role.id, platform=debian.id, tenant=atlas.id, vcpus=8, memory=16384, disk=40,
                  tags=[tags["htcondor-worker"].id, tags["atlas"].id], custom_fields={"batch_system": "htcondor", "gpus": 1, "experiments": ["atlas"]})
    primary(worker_a, "vm", ip4="198.51.100.10/24", ip6="2001:db8:2::10/64", dns6="worker-a.cloud.example")
    worker_b = vm("worker-b", status="offline", role=worker_role.id, vcpus=4, memory=8192, tags=[tags["htcondor-worker"].id, tags["belle2"].id],
                  custom_fields={"batch_system": "htcondor", "experiments": ["belle2"], "admin_user": "{{ 7 * 6 }}"})
    primary(worker_b, "vm", ip4="198.51.100.11/24")
    vm("node01", status="staged")  # same name as a device
