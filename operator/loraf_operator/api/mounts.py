"""Where a loraf pod finds its PersistentVolumeClaims: the contract between the builders,
which mount each claim read-only at `<PVC_ROOT>/<claimName>` (builders/pod.py), and the
trainer image, which reads model and data there (loraf_trainer.model_loading). No torch:
the trainer image imports it.
"""

from __future__ import annotations

PVC_ROOT = "/mnt/pvc"
#: Overrides PVC_ROOT where the claims are not at the pod's path (tests, `loraf run`).
ENV_PVC_ROOT = "LORAF_PVC_ROOT"
