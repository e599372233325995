#!/usr/bin/env python3
"""civitai-daemon benchmark: the daemon against curl, sha256sum and aria2c on a local nginx.

    uv run python bench/run.py                 # full run, 5 repetitions, writes bench/RESULTS.md
    uv run python bench/run.py --quick         # small files, 1 repetition: a smoke test
    uv run python bench/run.py --only capped,ingest --reps 5

The CLI only: harness/ (measuring, nginx, the daemon), scenarios/ and report.py do
the work. See bench/README.md for what each scenario measures and how.
"""
import argparse
import atexit
import datetime
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import ROOT, WORK  # noqa: E402
from harness.context import Bench  # noqa: E402
from harness.measure import log  # noqa: E402
from harness.servers import ensure_tools  # noqa: E402
from report import write_results  # noqa: E402
from scenarios import FULL, QUICK, SCENARIOS  # noqa: E402

MIN_REPS = 5


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, help=f"repetitions per scenario (default {FULL['reps']}; 1 with --quick)")
    parser.add_argument("--quick", action="store_true", help="small files and 1 repetition: a smoke test")
    parser.add_argument("--only", default=",".join(SCENARIOS), help=f"comma-separated subset of {','.join(SCENARIOS)}")
    parser.add_argument("--settle", type=float, help="seconds between one run's cleanup and the next start (default 4)")
    parser.add_argument("--max-wait", type=float, default=15.0,
                        help="longest wait for the machine to be < 15%% busy before each timed run (default 15 s)")
    parser.add_argument("--write", help="where to write the Markdown report (default bench/RESULTS.md for a full "
                                        "run, else bench/work/RESULTS-quick.md / RESULTS-partial.md)")
    args = parser.parse_args(argv)
    args.only = [x.strip() for x in args.only.split(",") if x.strip()]
    unknown = set(args.only) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}; known: {', '.join(SCENARIOS)}")
    args.reps = args.reps or (QUICK if args.quick else FULL)["reps"]
    return args


def main(argv=None):
    args = parse(sys.argv[1:] if argv is None else argv)
    if not args.quick and args.reps < MIN_REPS:
        log(f"note: fewer than {MIN_REPS} repetitions; the targets ask for medians of at least {MIN_REPS}")
    ensure_tools()
    WORK.mkdir(parents=True, exist_ok=True)
    b = Bench(args, QUICK if args.quick else FULL)

    def on_signal(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started in the background
    atexit.register(b.stop_all)
    started = datetime.datetime.now(datetime.timezone.utc)
    t0 = time.monotonic()
    try:
        b.nginx.start()
        for name, scenario in SCENARIOS.items():   # the registry's order, whatever --only's
            if name in args.only:
                log(f"== {name}")
                b.results[name] = scenario(b)
    except KeyboardInterrupt:
        log("interrupted; stopping nginx and the daemons")
        return 130
    finally:
        b.stop_all()
    path, table = write_results(b, args, SCENARIOS, started, time.monotonic() - t0)
    print()
    print(table)
    print()
    log(f"written to {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
