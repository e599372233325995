"""The outcome of a worker step's resolve or fetch stage: what to record, and why."""
import dataclasses
import datetime

from .civitai import parse_time
from .models import utcnow
from .states import Status


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What the resolve or fetch stage decided; `_record` writes it."""
    state: Status | None              # the state to record; None: record nothing (it moved meanwhile)
    message: str = ""                 # the error, the reason to wait, or how it completed
    fields: dict = dataclasses.field(default_factory=dict)
    not_before: datetime.datetime | None = None
    event: str | None = None          # the event to announce instead of the state's own
    stopped: bool = False             # the fetch was stopped: `_after_stop` decides what that means
    job: object = None

    @classmethod
    def completed(cls, message, **fields):
        return cls(Status.COMPLETED, message, fields)

    @classmethod
    def failed(cls, message, **fields):
        return cls(Status.FAILED, message, fields)

    @classmethod
    def later(cls, message, not_before):
        return cls(Status.QUEUED, message, not_before=not_before)

    @classmethod
    def requeue(cls, message, **fields):
        return cls(Status.QUEUED, message, fields)

    @classmethod
    def interrupted(cls, job=None):
        return cls(None, "stopped", stopped=True, job=job)


def until(not_before):
    """An early-access end as a datetime (an hour from now when unknown)."""
    until = parse_time(not_before) if isinstance(not_before, str) else not_before
    return until or utcnow() + datetime.timedelta(hours=1)
