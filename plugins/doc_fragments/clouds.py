# -*- coding: utf-8 -*-
# Copyright: hepinfra.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    """The cloud definitions every elastic module takes (module_utils/_clouds.py holds the spec)."""

    DOCUMENTATION = r"""
options:
  clouds:
    description:
      - The site's clouds, each described once, usually as a list C(hepinfra_clouds) in group_vars and
        passed to the module as O(clouds) with the value C({{ hepinfra_clouds }}). The module takes the clouds it works on from this
        list by name.
      - Every entry is validated; a bad field fails the task with a message naming the cloud and the field.
      - Credentials in it are never printed (Ansible hides them from results and logs).
    type: list
    elements: dict
    required: true
    suboptions:
      name:
        description:
          - The cloud's name, unique in the list (letters, digits, C(.), C(_), C(-); at most 63).
        type: str
        required: true
      type:
        description:
          - V(openstack) (Nova, Glance, Neutron through openstacksdk) or V(libvirt) (a hypervisor and a storage pool).
        type: str
        required: true
        choices: [openstack, libvirt]
      enabled:
        description:
          - A disabled cloud is left out unless a task names it and asks for disabled clouds.
        type: bool
        default: true
      priority:
        description:
          - Larger is preferred; modules that work on several clouds go through them in this order.
        type: int
        default: 0
      openstack:
        description:
          - How to reach an V(openstack) cloud. Exactly one of O(clouds[].openstack.cloud) and O(clouds[].openstack.auth).
        type: dict
        suboptions:
          cloud:
            description:
              - An entry of a C(clouds.yaml) (found where openstacksdk looks, or in O(clouds[].openstack.config_file)).
            type: str
          config_file:
            description:
              - The C(clouds.yaml) holding O(clouds[].openstack.cloud), on the host the module runs on.
            type: path
          auth:
            description:
              - Keystone authentication, as in C(clouds.yaml). Give either username and password with a project,
                or (preferred) an application credential, which needs no project.
            type: dict
            suboptions:
              auth_url:
                description: Keystone's URL, for example C(https://keystone.example.org:5000/v3).
                type: str
              username:
                description: The user's name.
                type: str
              user_id:
                description: The user's id.
                type: str
              password:
                description: The user's password.
                type: str
              project_name:
                description: The project to scope to.
                type: str
              project_id:
                description: The project's id.
                type: str
              user_domain_name:
                description: The user's domain.
                type: str
              user_domain_id:
                description: The user's domain id.
                type: str
              project_domain_name:
                description: The project's domain.
                type: str
              project_domain_id:
                description: The project's domain id.
                type: str
              application_credential_id:
                description:
                  - An application credential's id (selects the C(v3applicationcredential) auth type).
                  - Its expiry is read at every connection; within O(clouds[].credential_warning_days) of it
                    the module warns.
                type: str
              application_credential_name:
                description: An application credential's name (needs O(clouds[].openstack.auth.username) or O(clouds[].openstack.auth.user_id)).
                type: str
              application_credential_secret:
                description: The application credential's secret.
                type: str
          auth_type:
            description:
              - The keystoneauth plugin; by default C(password), or C(v3applicationcredential) when an application
                credential is given.
            type: str
          region_name:
            description: The region whose endpoints are used.
            type: str
          interface:
            description: The endpoint interface.
            type: str
            choices: [public, internal, admin]
          verify:
            description: Whether to verify TLS certificates.
            type: bool
          cacert:
            description: A CA bundle to verify TLS certificates with.
            type: path
          api_timeout:
            description: Seconds to wait for an API answer.
            type: int
            default: 60
      libvirt:
        description:
          - How to reach a V(libvirt) cloud.
        type: dict
        suboptions:
          uri:
            description:
              - The libvirt connection URI, for example C(qemu+ssh://root@hv01.example.org/system) or C(qemu:///system).
            type: str
            required: true
          pool:
            description: The storage pool that holds images and worker disks.
            type: str
            required: true
          network:
            description: The libvirt network workers are attached to.
            type: str
          flavors:
            description:
              - "The worker sizes this hypervisor offers, by name (libvirt has no flavors of its own): each a dict
                with C(vcpus), C(memory_mb) and optionally C(disk_gb) (the worker disk's size; at least the image's)."
              - "Example: C({w1.small: {vcpus: 1, memory_mb: 2048}})."
            type: dict
          domain_type:
            description:
              - The domain type of workers, V(kvm) (hardware acceleration) or V(qemu) (emulation, slow).
            type: str
            default: kvm
            choices: [kvm, qemu]
          machine:
            description: The machine type of workers (for example C(q35)); the hypervisor's default C(pc) when unset.
            type: str
          boot:
            description:
              - Direct kernel boot for images without a boot loader. Paths are on the hypervisor.
              - When unset, workers boot from their disk.
            type: dict
            suboptions:
              kernel:
                description: The kernel file.
                type: str
                required: true
              initrd:
                description: The initial RAM disk file.
                type: str
              cmdline:
                description: The kernel command line; C(root=/dev/vda rw console=ttyS0) when unset.
                type: str
          persistent:
            description:
              - Define workers as persistent domains (kept in libvirt's configuration when shut off) instead of
                transient ones (gone from libvirt when they stop; their disks are then removed by the next run
                of M(hepinfra.cloud.worker)).
            type: bool
            default: false
          console_log:
            description:
              - An existing directory on the hypervisor where each worker's serial console is written, as
                C(<worker name>.console.log), by libvirt's log daemon (virtlogd); the place to look when a worker
                does not join the pool.
              - The files stay when their worker is deleted; removing old ones is the site's (logrotate, tmpfiles.d).
              - When unset, the console is not recorded.
            type: str
      limits:
        description:
          - What the site may use on this cloud. Unset limits are unlimited.
        type: dict
        suboptions:
          cores:
            description: Virtual CPUs.
            type: int
          ram_mb:
            description: Memory in MiB.
            type: int
          instances:
            description: Instances.
            type: int
          count_project_usage:
            description:
              - A soft limit. When true, everything running in the same project counts against the limits,
                not only this site's workers (for projects shared with other users).
            type: bool
            default: false
      defaults:
        description:
          - What workers on this cloud use unless a task says otherwise.
        type: dict
        suboptions:
          flavor:
            description: The flavor (OpenStack).
            type: str
          image:
            description: The image name.
            type: str
          network:
            description: The network (OpenStack network, or libvirt network).
            type: str
          key_name:
            description: The SSH key pair (OpenStack).
            type: str
          security_groups:
            description: The security groups (OpenStack).
            type: list
            elements: str
      user_data:
        description:
          - What user-data the cloud takes.
        type: dict
        suboptions:
          max_bytes:
            description:
              - The largest user-data. Default 65535 for V(openstack) (counted after base64, Nova's limit) and
                1 MiB for V(libvirt) (a NoCloud seed disk). EC2 takes 16384 bytes before base64.
            type: int
          limit_after_base64:
            description:
              - Whether O(clouds[].user_data.max_bytes) counts the base64 text (V(true) for OpenStack) or the raw bytes.
            type: bool
          compression:
            description:
              - Whether the cloud's guests take gzip-compressed user-data. Set V(false) for clouds that
                reject it; plain text is used there.
            type: bool
            default: true
      image_formats:
        description:
          - The image formats the cloud takes, preferred first. An image in another format is converted to the
            first one (for example V([raw]) for Ceph-backed Glance). Default V([qcow2, raw]).
        type: list
        elements: str
        choices: [qcow2, raw]
      credential_warning_days:
        description:
          - Warn when the cloud's application credential expires within this many days.
        type: int
        default: 30
"""
