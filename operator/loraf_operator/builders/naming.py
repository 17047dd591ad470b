"""Deterministic names of a run's children and safe label values.

Child objects are named `<name>-r<run>`: the same resource and run always give the same
names, so a repeated event or an operator restart finds the existing objects (409 on create)
instead of making a second Job. Names are capped at 63 characters because the Job name
becomes the pods' `batch.kubernetes.io/job-name` label value (labels allow 63); when
`<name>-r<run>` is longer, the resource name is cut and an 8-hex hash of the full name keeps
two long names that share a prefix apart.
"""

from __future__ import annotations

import hashlib

MAX_LABEL = 63
_HASH_LEN = 8


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:_HASH_LEN]


def _cut(base: str, suffix: str, limit: int) -> str:
    """`base` cut so that base+suffix fits `limit`, never ending in '-' or '.'."""
    return base[: max(limit - len(suffix), 0)].rstrip("-._") + suffix


def child_name(name: str, run: int) -> str:
    """Name of run `run`'s Job, ServiceAccount, Role and RoleBinding (<= 63 chars)."""
    full = f"{name}-r{run}"
    if len(full) <= MAX_LABEL:
        return full
    # Keep "-r<run>" readable at the end; the hash tells truncated names apart.
    return _cut(name, f"-{_digest(full)}-r{run}", MAX_LABEL)


def config_map_name(name: str, run: int) -> str:
    """Name of run `run`'s ConfigMap (`<child>-config`)."""
    return f"{child_name(name, run)}-config"


def serving_config_map_name(name: str) -> str:
    """Name of a LoRAServing's adapter-list ConfigMap (`<name>-adapters`, <= 63 chars); a
    cut name keeps the full name's hash, so two long names never share a ConfigMap."""
    full = f"{name}-adapters"
    if len(full) <= MAX_LABEL:
        return full
    return _cut(name, f"-{_digest(name)}-adapters", MAX_LABEL)


def serving_child_name(name: str) -> str:
    """Name of a LoRAServing's Deployment and Service (<= 63 chars)."""
    return label_value(name)


def dedicated_serving_name(finetune: str) -> str:
    """Name of the LoRAServing a fine-tune owns when it names no shared one: its own name
    (api.models refuses a serving-enabled fine-tune whose name is no valid Service name)."""
    return finetune


def label_value(value: str) -> str:
    """`value` as a valid label value (<= 63 chars, alphanumeric at both ends)."""
    if len(value) <= MAX_LABEL:
        return value
    return _cut(value, f"-{_digest(value)}", MAX_LABEL)


def service_name(name: str, run: int) -> str:
    """Name of run `run`'s headless rendezvous Service (multi-node runs), also the pods'
    `subdomain`. A Service name is an RFC 1035 label (a letter first, no dots), which a
    resource name need not be: dots become dashes and a leading digit gets an `r`."""
    base = child_name(name, run).replace(".", "-")
    if base[0].isalpha():
        return base
    if len(base) < MAX_LABEL:
        return "r" + base
    return _cut("r" + name.replace(".", "-"), f"-{_digest(f'{name}-r{run}')}-r{run}", MAX_LABEL)
