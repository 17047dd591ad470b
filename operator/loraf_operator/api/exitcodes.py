"""Trainer exit codes: the contract between the trainer process and the operator's Job policy.

See docs/architecture.md ("Exit codes"). Codes 64-66 and 77 fail the Job at once
(`podFailurePolicy: FailJob`), 69 and 75 are retried without counting against
`backoffLimit` (`podFailurePolicy: Ignore`); any other non-zero code is an
infrastructure failure.
"""

from __future__ import annotations

from enum import IntEnum

from . import conditions as why


class ExitCode(IntEnum):
    OK = 0
    CONFIG_INVALID = 64  # EX_USAGE: config fails validation or asks for what we refuse
    DATASET_INVALID = 65  # EX_DATAERR: a dataset row is invalid (message names row and field)
    MODEL_INVALID = 66  # EX_NOINPUT: base model cannot be found or loaded
    STORAGE_UNAVAILABLE = 69  # EX_UNAVAILABLE: S3 unreachable for output.retry.timeoutSeconds
    PREEMPTED = 75  # EX_TEMPFAIL: SIGTERM received, checkpoint saved
    STORAGE_ACCESS_DENIED = 77  # EX_NOPERM: S3 rejected the credentials or the access

    @property
    def reason(self) -> str:
        """CamelCase condition reason for this code (e.g. ``ConfigInvalid``)."""
        return _REASONS[self]

    @property
    def fail_fast(self) -> bool:
        """True when retrying cannot help (the Job fails at once)."""
        return self in (
            ExitCode.CONFIG_INVALID,
            ExitCode.DATASET_INVALID,
            ExitCode.MODEL_INVALID,
            ExitCode.STORAGE_ACCESS_DENIED,
        )

    @property
    def retried_free(self) -> bool:
        """True when the Job retries it without counting it against backoffLimit: the
        trainer saved its work (preemption) or waited out a storage outage for its
        configured time; the next pod resumes from the last stored checkpoint."""
        return self in (ExitCode.PREEMPTED, ExitCode.STORAGE_UNAVAILABLE)


_REASONS: dict[ExitCode, str] = {
    ExitCode.OK: why.REASON_COMPLETED,
    ExitCode.CONFIG_INVALID: why.REASON_CONFIG_INVALID,
    ExitCode.DATASET_INVALID: why.REASON_DATASET_INVALID,
    ExitCode.MODEL_INVALID: why.REASON_MODEL_INVALID,
    ExitCode.STORAGE_UNAVAILABLE: why.REASON_STORAGE_UNAVAILABLE,
    ExitCode.PREEMPTED: why.REASON_PREEMPTED,
    ExitCode.STORAGE_ACCESS_DENIED: why.REASON_STORAGE_ACCESS_DENIED,
}

#: Codes the Job's podFailurePolicy treats as permanent (FailJob).
FAIL_FAST_CODES: tuple[int, ...] = tuple(int(c) for c in ExitCode if c.fail_fast)
#: Codes the Job's podFailurePolicy retries without counting (Ignore).
RETRIED_FREE_CODES: tuple[int, ...] = tuple(int(c) for c in ExitCode if c.retried_free)


def reason_for(code: int) -> str:
    """Condition reason for any exit code; unknown non-zero codes are ``InfrastructureFailure``."""
    try:
        return ExitCode(code).reason
    except ValueError:
        return why.REASON_INFRASTRUCTURE_FAILURE
