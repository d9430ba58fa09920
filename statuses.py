"""The named values stored in status and stage columns and carried by webhook events.

Each is a `StrEnum`, so a member is its stored string: it compares equal to
what the database returns, and JSON writes it as that string.
"""
from enum import StrEnum


class ExecutionStatus(StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    SUCCESS = "Success"
    FAILED = "Failed"
    CANCELLED = "Cancelled"

    @property
    def finished(self):
        return self in FINISHED


FINISHED = frozenset({ExecutionStatus.SUCCESS, ExecutionStatus.FAILED, ExecutionStatus.CANCELLED})


class Stage(StrEnum):
    """Where an execution is; README.md, "Stages and progress", gives each its band."""
    QUEUED = "Queued"
    INITIALIZING = "Initializing"
    DUMPING = "Dumping"
    UPLOADING = "Uploading"
    VERIFYING = "Verifying"
    APPLYING_RETENTION = "Applying Retention"
    COMPLETED = "Completed"
    FAILED = "Failed"
    CANCELLED = "Cancelled"
    # the stages of a Restore execution (with Initializing and Verifying)
    DOWNLOADING = "Downloading"
    RESTORING = "Restoring"
    CHECKING = "Checking"
    # the stages of a wpsec:// execution
    REQUESTING = "Requesting"
    REMOTE_BACKUP = "Remote Backup"
    SYNCING = "Syncing"


class BackupStatus(StrEnum):
    """A WPSec backup's status, as the plugin spells it."""
    PENDING = "pending"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"


OPEN_BACKUP_STATUSES = (BackupStatus.PENDING, BackupStatus.IN_PROGRESS)
TERMINAL_BACKUP_STATUSES = (BackupStatus.COMPLETED, BackupStatus.FAILED)


class EventKind(StrEnum):
    """The three webhooks WPSec sends about a backup."""
    PROGRESS = "progress"
    COMPLETE = "complete"
    FAILED = "failed"


class ExecutionType(StrEnum):
    """What an execution does: the seed's `type`."""
    BACKUP = "Backup"
    RESTORE = "Restore"


class WebhookOutcome(StrEnum):
    """What became of a webhook event (webhook_tally, /metrics)."""
    APPLIED = "applied"  # it moved its backup, or created it
    IGNORED = "ignored"  # its backup had already ended: kept in the history, nothing changed
    DUPLICATE = "duplicate"  # a spool replay of an event applied before
    UNKNOWN_WEBSITE = "unknown_website"  # no website has its domain (404)
    INVALID = "invalid"  # its body breaks the contract, or is over 1 MiB (400, 413)


class NotificationKind(StrEnum):
    """How a notification is delivered (notifications.py)."""
    WEBHOOK = "webhook"  # a signed JSON POST to an http(s) URL
    PING = "ping"        # Healthchecks-style: URL/start, URL, URL/fail
    APPRISE = "apprise"  # any URL the apprise library sends to


class NotifyOn(StrEnum):
    """Which events a notification wants (`notify add --on`)."""
    FAILURE = "failure"
    SUCCESS = "success"
    ALWAYS = "always"
    OVERDUE = "overdue"


class NotificationEvent(StrEnum):
    """What an outbox message reports: its `event`."""
    START = "start"                      # pings only: a backup started
    SUCCESS = "success"
    FAILURE = "failure"                  # a failed run, or a WPSec backup-failed webhook
    CANCEL = "cancel"
    RETENTION_ERROR = "retention_error"  # the backup succeeded, pruning older ones did not
    OVERDUE = "overdue"                  # no success within the notification's overdue hours
    SIZE_DROP = "size_drop"              # an artifact under half the median of the last successes
    TEST = "test"                        # `backhook notify test`


class OutboxStatus(StrEnum):
    """An outbox message's status (notification_outbox.status)."""
    PENDING = "pending"  # waiting for its next attempt, or being sent
    SENT = "sent"
    FAILED = "failed"    # every attempt failed
