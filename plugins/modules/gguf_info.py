#!/usr/bin/python
# Copyright: llamafleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
---
module: gguf_info
short_description: Describe a GGUF model file on the host, or fail if it is not one
description:
  - Reads the header of a GGUF file (metadata and tensor table, never the weights) and returns what
    llamafleet's memory model needs (architecture, layers, heads, context, vocabulary, sizes).
  - Fails with a clear message when the file is missing, is not GGUF, is truncated (its tensor data
    ends past the end of the file) or has an architecture llamafleet cannot plan.
  - Uses the official C(gguf) Python package when the host has it; without it only the magic bytes
    and the version are checked (C(parsed=false)).
version_added: "0.1.0"
author: llamafleet contributors (@llamafleet)
options:
  path:
    description: Path of the GGUF file on the host.
    type: path
    required: true
attributes:
  check_mode:
    support: full
    description: Reads only; nothing on the host changes.
notes:
  - Read-only; never changes the host.
"""

EXAMPLES = r"""
- name: Check a model before starting a server on it
  gguf_info:
    path: /var/lib/llamafleet/models/gemma-3-270m-q4_k_m.gguf
  register: model

- name: Show its architecture
  ansible.builtin.debug:
    msg: "{{ model.model.architecture }} with {{ model.model.n_layer }} layers"
"""

RETURN = r"""
parsed:
  description: Whether the header was parsed with the gguf package (false means magic bytes only).
  returned: always
  type: bool
model:
  description: Summary of the model (architecture, n_layer, n_embd, n_head, n_head_kv, n_ctx_train, sizes).
  returned: when parsed
  type: dict
  sample: {architecture: gemma3, n_layer: 18, n_embd: 640, n_ctx_train: 32768}
version:
  description: GGUF format version.
  returned: always
  type: int
"""

import struct

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.llamafleet.fleet.plugins.module_utils.llamafleet_gguf import GGUFError, read_model_info


def main():
    module = AnsibleModule(argument_spec={"path": {"type": "path", "required": True}}, supports_check_mode=True)
    path = module.params["path"]
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
    except OSError as exc:
        module.fail_json(msg=f"{path}: cannot read ({exc.strerror})")
    if len(head) < 8 or head[:4] != b"GGUF":
        module.fail_json(msg=f"{path}: not a GGUF file (the first four bytes are not 'GGUF')")
    version = struct.unpack("<I", head[4:8])[0]
    try:
        import gguf  # noqa: F401 - presence check
    except ImportError:
        module.exit_json(changed=False, parsed=False, version=version)
    try:
        info = read_model_info(path)
    except GGUFError as exc:
        module.fail_json(msg=str(exc), version=version)
    module.exit_json(changed=False, parsed=True, version=version, model=info.summary())


if __name__ == "__main__":
    main()
