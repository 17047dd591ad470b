"""Whether this replica is on standby under kopf peering, for work kopf does not run.

kopf pauses its own handlers while a peer with a higher (or the same) priority is alive
in the (Cluster)KopfPeering object; the resync task is not a kopf handler, so it asks
the same question itself before it patches anything. `standby` is kopf's rule
(kopf/_core/engines/peering.py, process_peering_event) on the peering object's status:
{identity: {priority, lifetime, lastseen}}. This replica's identity is the one passed to
kopf.run (Settings.identity), so its own entry is told apart from an equal-priority peer.
"""

from __future__ import annotations

import getpass
import os
import random
import socket
import string
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any


def own_identity() -> str:
    """Like kopf's own default (POD_ID, else user@host/start time/random)."""
    pod = os.environ.get("POD_ID")
    if pod:
        return pod
    now = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    rnd = "".join(random.choices(string.ascii_lowercase + string.digits, k=3))
    return f"{getpass.getuser()}@{socket.gethostname()}/{now}/{rnd}"


def _alive(entry: Mapping[str, Any], now: datetime) -> bool:
    try:
        seen = datetime.fromisoformat(str(entry.get("lastseen")).replace("Z", "+00:00"))
    except ValueError:
        return True  # kopf counts an entry without a parseable time as just seen
    if seen.tzinfo is None:
        seen = seen.replace(tzinfo=UTC)
    return seen + timedelta(seconds=int(entry.get("lifetime") or 60)) > now


def standby(
    peers: Mapping[str, Any], identity: str, priority: int, now: datetime | None = None
) -> bool:
    """True while a live peer other than us has a priority >= ours (kopf pauses then)."""
    now = now or datetime.now(UTC)
    return any(
        isinstance(entry, Mapping)
        and opid != identity
        and _alive(entry, now)
        and int(entry.get("priority") or 0) >= priority
        for opid, entry in peers.items()
    )
