# -*- coding: utf-8 -*-
# Copyright: hepinfra.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    """The restic repository options shared by libvirt_backup and libvirt_restore."""

    DOCUMENTATION = r"""
options:
  repository:
    description:
      - The restic repository, in restic's own syntax, for example C(s3:https://s3.example.org/backups/vms),
        C(rest:https://backup.example.org/vms), C(sftp:backup@store:/srv/restic) or a local path.
      - It reaches restic through the environment (E(RESTIC_REPOSITORY)), never on its command line.
      - A URL with credentials (C(user:password@)) is refused, since this option is shown in task output;
        give rest-server credentials as E(RESTIC_REST_USERNAME) and E(RESTIC_REST_PASSWORD) in O(restic_env).
    type: str
    required: true
  repository_password:
    description:
      - The repository password. Exactly one of O(repository_password) and O(repository_password_file) is needed.
    type: str
  repository_password_file:
    description:
      - A file on the managed host holding the repository password (mode 0600).
    type: path
  s3_access_key_id:
    description:
      - The S3 access key for C(s3:) repositories (E(AWS_ACCESS_KEY_ID) for restic).
    type: str
  s3_secret_access_key:
    description:
      - The S3 secret key for C(s3:) repositories (E(AWS_SECRET_ACCESS_KEY) for restic).
    type: str
  restic_env:
    description:
      - More environment variables for restic, for example E(AWS_DEFAULT_REGION), E(RESTIC_COMPRESSION)
        or E(RESTIC_CACHE_DIR). Values are treated as secrets.
    type: dict
    default: {}
  restic_path:
    description:
      - The restic binary (restic 0.17 or later), by name on E(PATH) or as a path.
    type: str
    default: restic
  repository_timeout:
    description:
      - Seconds that opening, creating and listing the repository may take. restic retries an unreachable
        S3 endpoint, a missing bucket and rejected S3 keys for a long time; this bounds the wait.
    type: int
    default: 120
"""
