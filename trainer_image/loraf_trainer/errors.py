"""Failures the trainer reports with a dedicated exit code (docs/architecture.md).

Each carries a one-line human message; `cli.main` writes it to the termination log and
exits with the code, so the operator can set a precise condition reason instead of
counting a stack trace against the Job's backoff limit.
"""

from __future__ import annotations

from loraf_operator.api.exitcodes import ExitCode


class TrainerError(Exception):
    """A failure with a known exit code and a one-line message for people."""

    exit_code: int = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigInvalid(TrainerError):
    exit_code = ExitCode.CONFIG_INVALID


class DatasetInvalid(TrainerError):
    exit_code = ExitCode.DATASET_INVALID


class ModelInvalid(TrainerError):
    exit_code = ExitCode.MODEL_INVALID


class Preempted(TrainerError):
    exit_code = ExitCode.PREEMPTED


class StorageUnavailable(TrainerError):
    """S3 stayed unreachable for output.retry.timeoutSeconds (the Job retries for free)."""

    exit_code = ExitCode.STORAGE_UNAVAILABLE


class StorageAccessDenied(TrainerError):
    """S3 rejected the credentials or the access: retrying cannot help."""

    exit_code = ExitCode.STORAGE_ACCESS_DENIED
