"""Logging set-up (once, at start) with secrets redacted from every line.

The redaction filter sits on the handlers, so it also covers third-party
loggers (urllib3 at DEBUG prints request lines, for example).
"""
import logging
import logging.handlers
import sys
from pathlib import Path

from .redact import MASK, redact_text


class Redactor(logging.Filter):
    """Replace known secrets and token-shaped strings in the formatted message."""

    def __init__(self, secrets=()):
        super().__init__()
        self.secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def redact(self, text):
        for secret in self.secrets:
            text = text.replace(secret, MASK)
        return redact_text(text)

    def filter(self, record):
        if getattr(record, "_redacted", False):  # already done by the first handler
            return True
        record._redacted = True
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        record.msg = self.redact(message)
        record.args = None
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        return True


def setup(logs_dir, level, secrets=()):
    """Rotating download.log (at `level`), error.log (errors) and stderr."""
    logs_dir = Path(logs_dir)
    logs_dir.mkdir(parents=True, exist_ok=True)
    redactor = Redactor(secrets)
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(threadName)s] %(message)s")
    handlers = [
        logging.handlers.RotatingFileHandler(logs_dir / "download.log", maxBytes=10 << 20, backupCount=5,
                                             encoding="utf-8"),
        logging.handlers.RotatingFileHandler(logs_dir / "error.log", maxBytes=5 << 20, backupCount=3,
                                             encoding="utf-8"),
        logging.StreamHandler(sys.stderr),
    ]
    handlers[1].setLevel(logging.ERROR)
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        handler.setFormatter(formatter)
        handler.addFilter(redactor)
        root.addHandler(handler)
    root.setLevel(level)
    # gevent-websocket logs every plain HTTP request at INFO; the API has its own access log.
    logging.getLogger("geventwebsocket.handler").setLevel(logging.WARNING)
    logging.getLogger("apscheduler").setLevel(max(logging.WARNING, logging.getLevelName(level)))
    logging.getLogger("watchdog").setLevel(logging.WARNING)
    # peewee logs every SQL statement at DEBUG: far too much even for debugging downloads.
    logging.getLogger("peewee").setLevel(logging.INFO)
    logging.getLogger("tzlocal").setLevel(logging.INFO)
    return redactor
