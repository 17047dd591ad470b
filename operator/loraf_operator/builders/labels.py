"""Labels and annotations on every object loraf creates for a run.

Label values are capped at 63 characters, so the full resource name also goes into an
annotation (`loraf.dev/finetune`): handlers read the annotation to find the owning
LoRAFineTune, and select with the labels.
"""

from __future__ import annotations

from .naming import label_value

MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE = "loraf"
COMPONENT = "app.kubernetes.io/component"
FINETUNE = "loraf.dev/finetune"  # label (maybe truncated) and annotation (full name)
RUN = "loraf.dev/run"
SPEC_HASH = "loraf.dev/spec-hash"  # annotation on the Job: which spec the run trains
GENERATION = "loraf.dev/generation"  # annotation: metadata.generation the run started for
QUEUE_NAME = "kueue.x-k8s.io/queue-name"  # copied from the LoRAFineTune to the Job
JOB_NAME = "batch.kubernetes.io/job-name"  # set on pods by the Job controller

#: Selector of the fine-tune runs' children and pods (not the serving ones, whose component
#: is "server"): the operator watches Jobs and Pods with it.
RUN_SELECTOR = {MANAGED_BY: MANAGED_BY_VALUE, COMPONENT: "trainer"}


def run_labels(name: str, run: int) -> dict[str, str]:
    """Labels of every child of run `run` of LoRAFineTune `name` (and of its pods)."""
    return {
        "app.kubernetes.io/name": "loraf-trainer",
        "app.kubernetes.io/instance": label_value(name),
        "app.kubernetes.io/part-of": "loraf",
        **RUN_SELECTOR,
        FINETUNE: label_value(name),
        RUN: str(run),
    }


def run_annotations(name: str, run: int, generation: int) -> dict[str, str]:
    return {FINETUNE: name, RUN: str(run), GENERATION: str(generation)}
