"""Bulk data for the inventory benchmark, run inside NetBox (`netbox shell` reads it on stdin).

Creating 10,000 objects through the API takes over ten minutes (~15 per second), so they
are written with the ORM's bulk_create, once, and the database is kept as a snapshot.
DEVICES and VMS are replaced by the caller. Every host gets a primary IPv4 address on an
interface, tags and custom field values, like a real site's records.
"""

import netaddr
from django.contrib.contenttypes.models import ContentType
from django.db import transaction

from core.models import ObjectType
from dcim.models import Device, DeviceRole, DeviceType, Interface, Location, Manufacturer, Platform, Rack, Site
from extras.models import CustomField, Tag, TaggedItem
from ipam.models import IPAddress
from tenancy.models import Tenant
from virtualization.models import Cluster, ClusterType, VirtualMachine, VMInterface

DEVICES = 5000
VMS = 5000


def build():
    device_ot = ObjectType.objects.get_for_model(Device)
    vm_ot = ObjectType.objects.get_for_model(VirtualMachine)
    for name, kind in (("batch_system", "text"), ("gpus", "integer"), ("owner", "text")):
        field = CustomField.objects.create(name=name, type=kind)
        field.object_types.set([device_ot, vm_ot])
    tags = [Tag.objects.create(name=f"Tag {n}", slug=f"tag-{n}") for n in range(8)]
    sites = [Site.objects.create(name=f"Site {n}", slug=f"site-{n}") for n in range(10)]
    locations = [Location.objects.create(name=f"Hall {n}", slug=f"hall-{n}", site=site) for n, site in enumerate(sites)]
    racks = [Rack.objects.create(name=f"R{n:03d}", site=sites[n % 10], location=locations[n % 10]) for n in range(100)]
    maker = Manufacturer.objects.create(name="Vendor", slug="vendor")
    models = [DeviceType.objects.create(manufacturer=maker, model=f"Model {n}", slug=f"model-{n}") for n in range(4)]
    roles = [DeviceRole.objects.create(name=f"Role {n}", slug=f"role-{n}", vm_role=True) for n in range(5)]
    platforms = [Platform.objects.create(name=f"OS {n}", slug=f"os-{n}") for n in range(3)]
    tenants = [Tenant.objects.create(name=f"Experiment {n}", slug=f"experiment-{n}") for n in range(4)]
    cluster_type = ClusterType.objects.create(name="OpenStack", slug="openstack")
    clusters = [Cluster.objects.create(name=f"cloud-{n}", type=cluster_type, scope=sites[n]) for n in range(10)]

    def fields(n):
        return {"batch_system": "htcondor" if n % 5 else "slurm", "gpus": n % 4, "owner": f"team-{n % 7}"}

    devices = Device.objects.bulk_create([
        Device(name=f"dev{n:05d}", site=sites[n % 10], location=locations[n % 10], rack=racks[n % 100],
               device_type=models[n % 4], role=roles[n % 5], platform=platforms[n % 3], tenant=tenants[n % 4],
               status="active" if n % 10 else "offline", custom_field_data=fields(n))
        for n in range(DEVICES)
    ], batch_size=1000)
    vms = VirtualMachine.objects.bulk_create([
        VirtualMachine(name=f"vm{n:05d}", cluster=clusters[n % 10], site=sites[n % 10], role=roles[n % 5],
                       platform=platforms[n % 3], tenant=tenants[n % 4], status="active" if n % 10 else "staged",
                       vcpus=8, memory=16384, disk=40, custom_field_data=fields(n))
        for n in range(VMS)
    ], batch_size=1000)
    interfaces = Interface.objects.bulk_create([Interface(device=d, name="eth0", type="25gbase-x-sfp28") for d in devices], batch_size=1000)
    vm_interfaces = VMInterface.objects.bulk_create([VMInterface(virtual_machine=v, name="eth0") for v in vms], batch_size=1000)
    interface_ct = ContentType.objects.get_for_model(Interface)
    vm_interface_ct = ContentType.objects.get_for_model(VMInterface)

    def address(n):
        return netaddr.IPNetwork(f"10.{n // 65536}.{(n // 256) % 256}.{n % 256}/8")

    device_ips = IPAddress.objects.bulk_create([
        IPAddress(address=address(n + 1), status="active", assigned_object_type=interface_ct, assigned_object_id=i.pk)
        for n, i in enumerate(interfaces)
    ], batch_size=1000)
    vm_ips = IPAddress.objects.bulk_create([
        IPAddress(address=address(DEVICES + n + 1), status="active", assigned_object_type=vm_interface_ct, assigned_object_id=i.pk)
        for n, i in enumerate(vm_interfaces)
    ], batch_size=1000)
    for device, ip in zip(devices, device_ips):
        device.primary_ip4 = ip
    for vm, ip in zip(vms, vm_ips):
        vm.primary_ip4 = ip
    Device.objects.bulk_update(devices, ["primary_ip4"], batch_size=1000)
    VirtualMachine.objects.bulk_update(vms, ["primary_ip4"], batch_size=1000)
    device_ct = ContentType.objects.get_for_model(Device)
    vm_ct = ContentType.objects.get_for_model(VirtualMachine)
    TaggedItem.objects.bulk_create(
        [TaggedItem(tag=tags[n % 8], content_type=device_ct, object_id=d.pk) for n, d in enumerate(devices)]
        + [TaggedItem(tag=tags[(n + 3) % 8], content_type=device_ct, object_id=d.pk) for n, d in enumerate(devices)]
        + [TaggedItem(tag=tags[n % 8], content_type=vm_ct, object_id=v.pk) for n, v in enumerate(vms)],
        batch_size=2000,
    )
    print(f"created {len(devices)} devices and {len(vms)} virtual machines")


with transaction.atomic():
    build()
