"""The command line: `run` starts the daemon; the other commands talk to it over its API."""
import argparse
import sys

from . import __version__
from .states import ACTIONS


def _download_id(text):
    if not (text.isascii() and text.isdigit()) or int(text) < 1 or len(text) > 18:
        raise argparse.ArgumentTypeError(f"download id must be a positive integer, got {text!r}")
    return int(text)


def build_parser():
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=argparse.SUPPRESS, help="path of config.yaml (default ./config.yaml)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")
    parser = argparse.ArgumentParser(prog="civitai-daemon", parents=[common],
                                     description="Download manager for Civitai model files.")
    parser.add_argument("--version", action="version", version=f"civitai-daemon {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("run", parents=[common], help="start the daemon in the foreground")
    sub.add_parser("status", parents=[common], help="state counts and active downloads")
    listing = sub.add_parser("list", parents=[common], help="list downloads")
    listing.add_argument("--state", help="only downloads in this state (the daemon lists the states)")
    listing.add_argument("--limit", type=int, default=50)
    add = sub.add_parser("add", parents=[common], help="enqueue one download")
    add.add_argument("target", help="a URL or a Civitai model version id")
    add.add_argument("--sha256")
    add.add_argument("--filename")
    add.add_argument("--priority", type=int)
    add.add_argument("--subdir")
    for name in ACTIONS:
        action = sub.add_parser(name, parents=[common], help=f"{name} a download")
        action.add_argument("id", type=_download_id, help="download id")
    sub.add_parser("check-updates", parents=[common], help="run the model update check now")
    sub.add_parser("retry-failed", parents=[common], help="retry every failed download (after an outage)")
    update_all = sub.add_parser("update-all", parents=[common], help="apply every pending update (not base-model "
                                                                    "changes) under each model's policy")
    update_all.add_argument("--replace", action="store_true", help="replace the old files (moved to .replaced/)")
    scan = sub.add_parser("scan", parents=[common], help="scan the library (or join the running scan) and "
                                                         "show its progress")
    scan.add_argument("paths", nargs="*", metavar="PATH", help="folders or files under library.roots (default: all)")
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    config = getattr(args, "config", "config.yaml")
    if args.command in (None, "run"):
        from .service import run
        return run(config)
    from . import client
    return client.main(args, config)


if __name__ == "__main__":
    sys.exit(main())
