"""A tiny sd_notify(3) client: readiness, watchdog pings and status for systemd.

Every function is a no-op returning False outside systemd (no `NOTIFY_SOCKET`),
and never raises: a lost notification must not break the daemon. With
`NotifyAccess=main` systemd accepts messages from the main process only, so
call these from the daemon process itself (any thread), not from a child.
"""

from __future__ import annotations

import os
import socket


def notify(state: str) -> bool:
    """Send `state` (e.g. "READY=1") to `$NOTIFY_SOCKET`; True when it was sent."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        # An abstract socket: its name starts with a NUL byte instead of "@".
        address = "\0" + address[1:]
    elif not address.startswith("/"):
        # vsock: and other transports are for VMs; this daemon does not need them.
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode("utf-8"), address)
    except OSError:
        return False
    return True


def ready() -> bool:
    """Tell systemd that start-up finished (`Type=notify` waits for this)."""
    return notify("READY=1")


def stopping() -> bool:
    """Tell systemd that shutdown has begun."""
    return notify("STOPPING=1")


def watchdog() -> bool:
    """Ping the watchdog; with `WatchdogSec=` set, call at least every `watchdog_interval()`."""
    return notify("WATCHDOG=1")


def status(text: str) -> bool:
    """Set the one-line status that `systemctl status` shows."""
    return notify("STATUS=" + " ".join(text.split()))


def watchdog_interval() -> float | None:
    """Seconds between watchdog pings (half of `$WATCHDOG_USEC`), or None when no watchdog is armed."""
    usec = os.environ.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = os.environ.get("WATCHDOG_PID")
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    if value <= 0:
        return None
    return value / 2 / 1_000_000
