#!/usr/bin/env python3
"""Start civitai-daemon in the foreground: `python launch.py [--config PATH]`."""
import sys

from daemon.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
