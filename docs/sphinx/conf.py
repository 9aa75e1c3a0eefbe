"""Sphinx configuration of the collection's documentation site, built by `make docs`.

Started from `antsibull-docs sphinx-init --use-current hepinfra.cloud` and changed in three
ways: intersphinx is off, so the build fetches nothing; the Markdown guides of docs/ and the
roles' READMEs are read by myst-parser; and the references antsibull-docs makes to Ansible's
own documentation (common return values, ansible-core settings, ansible.builtin plugins) are
linked to docs.ansible.com here. Any other reference that does not resolve is a warning, and
the build treats warnings as errors.
"""

from __future__ import annotations

import re

from docutils import nodes

project = "hepinfra.cloud"
copyright = "hepinfra.cloud maintainers"  # pylint: disable=redefined-builtin
title = "hepinfra.cloud"
html_short_title = "hepinfra.cloud"
html_title = "hepinfra.cloud documentation"

extensions = ["sphinx_antsibull_ext", "myst_parser"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}

pygments_style = "ansible"
highlight_language = "YAML+Jinja"

html_theme = "sphinx_ansible_theme"
html_theme_options = {
    "topbar_links": {"Repository": "https://github.com/hepinfra/cloud", "Issues": "https://github.com/hepinfra/cloud/issues"},
}
html_show_sphinx = False
display_version = False
html_use_smartypants = True
html_use_modindex = False
html_use_index = False
html_copy_source = False

default_role = "any"
nitpicky = True

# Headings up to ### get anchors, so the guides' links such as workers.md#names-and-ownership resolve.
myst_heading_anchors = 3

ANSIBLE_DOCS = "https://docs.ansible.com/projects/ansible/latest/"
ANSIBLE_LABELS = {
    "common_return_values": ("reference_appendices/common_return_values.html", "Return Values"),
    "ansible_configuration_settings": ("reference_appendices/config.html", "Ansible Configuration Settings"),
}
ANSIBLE_BUILTIN_PLUGIN = re.compile(r"ansible_collections\.ansible\.builtin\.(\w+)_(\w+)")


def ansible_docs_reference(app, env, node, contnode):
    """Link a reference to Ansible's own documentation, which is not part of this site."""
    target = node.get("reftarget", "")
    reftype = node.get("reftype")
    title = None
    if reftype == "envvar" and target.startswith("ANSIBLE_"):
        path = f"reference_appendices/config.html#envvar-{target}"
    elif reftype == "ref" and target in ANSIBLE_LABELS:
        path, title = ANSIBLE_LABELS[target]
    elif reftype == "ref" and ANSIBLE_BUILTIN_PLUGIN.fullmatch(target):
        name, plugin_type = ANSIBLE_BUILTIN_PLUGIN.fullmatch(target).groups()
        path, title = f"collections/ansible/builtin/{name}_{plugin_type}.html", f"ansible.builtin.{name}"
    else:
        return None
    reference = nodes.reference("", "", internal=False, refuri=ANSIBLE_DOCS + path)
    if node.get("refexplicit") or title is None:
        reference += contnode
    else:
        reference += nodes.inline(title, title)
    return reference


def setup(app):
    app.connect("missing-reference", ansible_docs_reference)
