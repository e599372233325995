"""Sizes for people: the one byte-count formatter of messages and notifications (powers of 1000)."""


def size_text(n):
    """'512 B', '200.0 KB', '1.2 GB' — the unit of the error messages, the log and Telegram."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1000
