"""The scenarios, in run order, and the sizes they use (full and --quick).

Each scenario is a function `run(b) -> dict` of raw figures (lists: one value per
repetition); b is harness.context.Bench. Within a scenario every repetition runs
the daemon and then each peer (interleaved), so the machine's drift hits all alike.
"""
from harness import GiB, MB, MiB

from .api import api
from .ingest import ingest
from .library import library
from .memory import memory
from .throttle import throttle
from .transfer import capped, parallel, single

SCENARIOS = {
    "single": single,
    "parallel": parallel,
    "capped": capped,
    "throttle": throttle,
    "ingest": ingest,
    "memory": memory,
    "library": library,
    "api": api,
}

FULL = dict(single=1 * GiB, par_n=8, par_size=128 * MiB, capped=1 * GiB, cap="20m",
            thr_size=200 * MiB, thr_shared=100 * MiB, thr_rate="20MB", thr_rate_bps=20 * MB,
            ingest_n=1000, small_size=1024, mem_sizes=(1 * GiB, 4 * GiB),
            lib_n=2000, lib_big=12 * MiB, lib_small=256 << 10, lib_many=20_000, lib_many_size=4096, lib_cold=True,
            api_rows=10_000, api_requests=200, api_load=1 * GiB, reps=5, settle=4.0)
QUICK = dict(single=64 * MiB, par_n=8, par_size=8 * MiB, capped=64 * MiB, cap="5m",
             thr_size=10 * MiB, thr_shared=5 * MiB, thr_rate="5MB", thr_rate_bps=5 * MB,
             ingest_n=100, small_size=1024, mem_sizes=(64 * MiB, 256 * MiB),
             lib_n=200, lib_big=2 * MiB, lib_small=64 << 10, lib_many=2000, lib_many_size=4096, lib_cold=False,
             api_rows=300, api_requests=40, api_load=64 * MiB, reps=1, settle=1.0)
