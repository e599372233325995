"""The bench's harness: where things live, measuring, the servers and the daemon under test."""
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
BENCH = ROOT / "bench"
FILES = BENCH / ".files"      # the served files and generated libraries (git-ignored)
WORK = BENCH / "work"         # daemons' folders, peers' downloads, reports of partial runs (git-ignored)
MiB = 1 << 20
GiB = 1 << 30
MB = 10**6
CORES = os.cpu_count() or 1
