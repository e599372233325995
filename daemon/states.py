"""Download and manifest states, the one table of allowed transitions, and the user actions (SPEC §6)."""
import enum

from .errors import InvalidTransition


class Status(str, enum.Enum):
    """The state of one download (SPEC §6)."""
    QUEUED = "queued"
    DOWNLOADING = "downloading"
    PAUSED = "paused"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    def __str__(self):
        return self.value


class ManifestStatus(str, enum.Enum):
    """The state of one manifest; the folder it sits in has the same name (SPEC §5)."""
    PROCESSING = "processing"
    DONE = "done"
    FAILED = "failed"

    def __str__(self):
        return self.value


class UpdateState(str, enum.Enum):
    """The state of one detected model update (SPEC §11)."""
    PENDING = "pending"    # recorded; waits for an explicit apply (notify policy, base model changed)
    WAITING = "waiting"    # early or paid access with an end date (not_before)
    PAID = "paid"          # permanent paid access: never enqueued
    QUEUED = "queued"      # its download is in the queue
    APPLIED = "applied"    # the new file is in place (and the old one moved, with replace)
    IGNORED = "ignored"    # the model's policy is ignore
    FAILED = "failed"      # its download failed

    def __str__(self):
        return self.value


POLICIES = ("notify", "alongside", "replace")          # update_check.policy
MODEL_POLICIES = POLICIES + ("ignore",)                # per-model overrides
APPLY_MODES = ("alongside", "replace")


ENDED = frozenset({Status.COMPLETED, Status.FAILED, Status.CANCELLED})

TRANSITIONS = {
    Status.QUEUED: {Status.DOWNLOADING, Status.PAUSED, Status.CANCELLED, Status.COMPLETED, Status.FAILED},
    Status.DOWNLOADING: {Status.QUEUED, Status.PAUSED, Status.CANCELLED, Status.COMPLETED, Status.FAILED},
    Status.PAUSED: {Status.QUEUED, Status.CANCELLED},
    Status.FAILED: {Status.QUEUED},
    Status.CANCELLED: {Status.QUEUED},
    Status.COMPLETED: set(),
}

# The user-facing actions and the state each one leads to.
ACTIONS = {
    "pause": Status.PAUSED,
    "resume": Status.QUEUED,
    "cancel": Status.CANCELLED,
    "retry": Status.QUEUED,
}

# resume only leaves paused; retry only leaves failed/cancelled.
ACTION_SOURCES = {
    "pause": {Status.QUEUED, Status.DOWNLOADING},
    "resume": {Status.PAUSED},
    "cancel": {Status.QUEUED, Status.DOWNLOADING, Status.PAUSED},
    "retry": {Status.FAILED, Status.CANCELLED},
}


def check_transition(current, target):
    """Raise InvalidTransition unless current → target is allowed."""
    current, target = Status(current), Status(target)
    if target not in TRANSITIONS[current]:
        raise InvalidTransition(f"cannot go from {current} to {target}")


def check_action(action, current):
    """Return the target state of a user action, or raise InvalidTransition."""
    if action not in ACTIONS:
        raise InvalidTransition(f"unknown action {action!r}")
    current = Status(current)
    if current not in ACTION_SOURCES[action]:
        raise InvalidTransition(f"cannot {action} a download that is {current}")
    return ACTIONS[action]
