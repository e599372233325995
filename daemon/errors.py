"""The exception tree. The message is for humans; the type decides retrying."""

TOKEN_HELP = ("this model needs a Civitai API token: set civitai_token in config.yaml or the "
              "CIVITAI_API_TOKEN environment variable (create one at https://civitai.com/user/account)")


class DaemonError(Exception):
    """Base of every error the daemon raises on purpose."""


class ConfigError(DaemonError):
    """config.yaml is unusable; the daemon exits 2 with this message."""


class ManifestError(DaemonError):
    """A manifest is rejected whole; `problems` lists every reason."""

    def __init__(self, problems):
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


class InvalidTransition(DaemonError):
    """A queue action the download's current state does not allow (HTTP 409)."""


class NotFound(DaemonError):
    """An unknown download id (HTTP 404)."""


class TransientError(DaemonError):
    """Worth another attempt: network trouble, 5xx, 429, a hash mismatch."""

    def __init__(self, message, retry_after=None, restart=False):
        super().__init__(message)
        self.retry_after = retry_after
        self.restart = restart  # drop the part and start from byte zero


class PermanentError(DaemonError):
    """Retrying cannot help; the message says what the user should do."""


class HashMismatch(TransientError):
    """The bytes do not match the expected SHA256."""

    def __init__(self, expected, actual):
        super().__init__(f"SHA256 mismatch: expected {expected}, got {actual}", restart=True)
        self.expected = expected
        self.actual = actual


class FileInTheWay(PermanentError):
    """A different file already holds the target name; it is never overwritten."""


class DiskFull(PermanentError):
    """Not enough free space; retry after freeing some."""


class EarlyAccess(DaemonError):
    """The version is in early access; wait until `not_before` and try again."""

    def __init__(self, message, not_before):
        super().__init__(message)
        self.not_before = not_before


class Cancelled(DaemonError):
    """The download was paused, cancelled or the daemon is stopping."""


class PartBusy(DaemonError):
    """Another process (a daemon of the fleet) holds the lock on this download's part file."""
