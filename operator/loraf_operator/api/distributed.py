"""The contract between the Job builder and the trainer's launcher for runs of more than
one rank (docs/trainer.md, "More than one GPU").

The Job sets these env variables; `loraf train` reads them and starts torchrun
(torch.distributed.run) with one rank per GPU. A multi-node run is an Indexed Job: the Job
controller sets JOB_COMPLETION_INDEX and the pod hostname `<job>-<index>`, the headless
Service (named by `builders.naming.service_name`) gives `<job>-0.<service>` a DNS name,
and torchrun's c10d rendezvous meets there on RENDEZVOUS_PORT.
"""

from __future__ import annotations

RENDEZVOUS_PORT = 29400
RENDEZVOUS_PORT_NAME = "rendezvous"
# host:port of the c10d rendezvous (the pod of index 0); unset in a one-pod run.
ENV_RENDEZVOUS_ENDPOINT = "LORAF_RENDEZVOUS_ENDPOINT"
ENV_RENDEZVOUS_PORT = "LORAF_RENDEZVOUS_PORT"
ENV_RENDEZVOUS_ID = "LORAF_RENDEZVOUS_ID"  # the Job's name: the same across pod restarts
ENV_POD_IP = "LORAF_POD_IP"  # downward API status.podIP: the address peers reach this pod at
ENV_COMPLETION_INDEX = "JOB_COMPLETION_INDEX"  # set by the Job controller (Indexed Jobs)
