"""One bench run's shared state: the profile, the files, nginx, the settler and the daemons it started."""
from . import WORK
from .daemon import Daemon
from .measure import Settler, children, children_lock, log
from .servers import Files, Nginx, unlink_all


class Bench:
    """What every scenario gets: `p` (sizes), `args`, `files`, `nginx`, `results`, and the helpers below."""

    def __init__(self, args, profile):
        self.args, self.p = args, profile
        self.files = Files()
        self.nginx = Nginx(cap=profile["cap"])
        self.settler = Settler(args.settle if args.settle is not None else profile["settle"], args.max_wait)
        self.results = {}
        self.daemons = []
        self.peer_dir = WORK / "peers"

    def daemon(self, name, **config):
        d = Daemon(name, **config)
        self.daemons.append(d)
        return d

    def stop_daemon(self, d):
        d.stop()
        self.daemons.remove(d)

    def peer_clean(self):
        """Empty the peers' folder and start the settle time."""
        unlink_all(self.peer_dir)
        self.peer_dir.mkdir(parents=True, exist_ok=True)
        self.settler.cleaned()

    def timed(self, label):
        """Wait for a settled, quiet machine before a timed run; log the load it starts at."""
        rec = self.settler.wait(label)
        flag = " (machine busy)" if rec[1] > self.settler.busy_limit else ""
        log(f"  {label}: start at {rec[1] * 100:.0f}% CPU busy, load {rec[2]:.2f}{flag}")
        return rec

    def stop_all(self):
        for d in list(self.daemons):
            try:
                d.stop()
            except Exception:  # noqa: BLE001 - best effort on the way out
                pass
        self.daemons.clear()
        with children_lock:
            for proc in list(children):
                if proc.poll() is None:
                    try:
                        proc.kill()
                    except OSError:
                        pass
        self.nginx.stop()
