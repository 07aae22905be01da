"""Start a distributed (parameter-server) training job: ``python -m train_mx.launch``.

    python -m train_mx.launch -n WORKERS -s SERVERS [--hosts FILE] [--port P] -- <train args>

MXNet's ``dist_sync`` kvstore runs as one *scheduler*, ``S`` *servers* (they hold the
weights and apply the optimizer to the summed gradients) and ``N`` *workers* (they run
``python -m train_mx.train <train args> --kvstore dist_sync``). Every process learns its
role from environment variables:

``DMLC_ROLE``            scheduler / server / worker
``DMLC_PS_ROOT_URI``     the scheduler's address, ``DMLC_PS_ROOT_PORT`` its port
``DMLC_NUM_SERVER``      S, ``DMLC_NUM_WORKER`` N
``DMLC_NODE_HOST``       the address this process advertises to the others
``PS_VERBOSE``           ps-lite logging (``--verbose``, 1 or 2)

The scheduler and the servers are ``python -c "import mxnet"`` processes: MXNet 1.x runs
the server loop on import when ``DMLC_ROLE`` is server or scheduler, and they exit when the
workers finish (rank 0 tells the servers to stop).

Local (default): everything runs on this machine, on 127.0.0.1, on a free port unless
``--port`` is given. Relative paths in the train arguments are taken from the current
directory.

Several machines (``--hosts FILE``): one host per line (``#`` starts a comment), either
``HOST`` or ``HOST ADDRESS`` where HOST is what ``ssh`` is given (``user@name`` or an alias)
and ADDRESS the IP / name the other machines reach it at (default: HOST without ``user@``,
resolved here). Servers and workers are started round robin over the hosts with::

    ssh -o BatchMode=yes -tt HOST 'cd DIR && env DMLC_...=... PYTHONPATH=DIR python -m train_mx.train ...'

and the scheduler on the first host, whose address is ``DMLC_PS_ROOT_URI`` (``--scheduler-host``
gives another address for that machine, e.g. its cluster-network IP). Assumed: password-less
ssh keys for every host, the same checkout at the same path on every host (``--remote-dir``,
default the current directory) with the same Python (``--python``, default this interpreter,
e.g. the checkout's ``.venv/bin/python``), the sequences at the same paths, and the port
(``--port``; the default is only checked free here) open between the machines. ``-tt`` gives
each remote command a terminal, so killing the local ssh (timeout, Ctrl-C, failure) hangs it
up on the remote side too.

Supervision: output is relayed line by line with a ``[worker 0]`` style prefix (launch
order, not kvstore rank). The launcher waits for all workers, then gives the scheduler and
servers ``--grace`` seconds to exit and stops them. The first worker that fails, or a server
or the scheduler that exits while workers still run, stops the whole job (the others would
block in the next synchronous push forever). ``--timeout T`` bounds the whole job: at T
seconds every process group gets SIGTERM, whatever is left ``--grace`` seconds later SIGKILL,
and the launcher exits 124 (within T + grace + a few seconds however the processes behave).
Ctrl-C (or SIGTERM) is forwarded to the workers as SIGINT; anything left after ``--grace`` is
killed. ``train_mx.train`` stops after the step in hand and rank 0 writes its checkpoint; two
workers that stop one step apart leave the one ahead waiting for its partner's push, and
``--grace`` ends it (a checkpoint is written whole or not at all, so the last one stays
resumable either way).

Every worker must take part in every synchronous step to its end: ``train_mx.train`` waits for
its last push-pull on every rank before rank 0 reads the final weights (a worker that exits with
pushes still queued leaves rank 0 waiting for them forever; see ``Trainer.finish``).

Exit status: 0 when every worker succeeded, 1 when one failed, 124 on ``--timeout``, 130
when interrupted, 2 for bad arguments.

Only kvstore rank 0 writes checkpoints and the final model (``train_mx.train`` checks
``kvstore.rank``); each worker seeds its batch sampler with its rank so the workers draw
different minibatches while the servers keep one set of weights. Ranks are assigned by
ps-lite, not in launch order, so on several hosts rank 0 may run on any of them: give
``--out`` (and ``--save-model``) a shared filesystem path, which ``--resume`` also needs
(every worker must resume at the same iteration, or the synchronous pushes never match).
"""
from __future__ import annotations

import argparse
import math
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

# MXNet's kvstores across processes, which this launcher starts (train_mx.train takes them too)
DIST_KVSTORES = ("dist_sync", "dist_async", "dist_device_sync")

ROOT = Path(__file__).resolve().parents[1]
LOCAL = "127.0.0.1"
DEFAULT_SSH = "ssh -o BatchMode=yes -tt"
KILL_WAIT = 5.0     # seconds to wait for processes after SIGKILL
RELAY_WAIT = 2.0    # seconds, all output relays together, to pass on the last lines


@dataclass
class Node:
    role: str           # scheduler / server / worker
    index: int
    host: str | None    # ssh target, None = this machine
    address: str        # DMLC_NODE_HOST
    env: dict = field(default_factory=dict)
    argv: list = field(default_factory=list)
    proc: subprocess.Popen | None = None
    thread: threading.Thread | None = None

    @property
    def tag(self) -> str:
        return self.role if self.role == "scheduler" else f"{self.role} {self.index}"


def free_port(host: str = LOCAL) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def read_hosts(path) -> list:
    """``[(ssh_target, address), ...]`` from a hosts file."""
    hosts = []
    try:
        text = Path(path).read_text()
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a text file; a hosts file has one 'HOST' or 'HOST ADDRESS' per line") from None
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) > 2:
            raise ValueError(f"{path}: bad line {raw!r}; use 'HOST' or 'HOST ADDRESS'")
        target = parts[0]
        addr = parts[1] if len(parts) == 2 else target.rsplit("@", 1)[-1]
        if len(parts) == 1:
            try:
                addr = socket.gethostbyname(addr)
            except OSError:
                pass  # keep the name: the hosts may resolve it where this machine cannot
        hosts.append((target, addr))
    if not hosts:
        raise ValueError(f"{path}: no hosts")
    return hosts


def plan(args, train_args) -> tuple:
    """The nodes of the job (scheduler, servers, workers) with their env and argv."""
    py = args.python or sys.executable
    if args.hosts:
        hosts = read_hosts(args.hosts)
        root_uri = args.scheduler_host or hosts[0][1]
        places = {"scheduler": [(hosts[0][0], root_uri)]}
        places["server"] = [hosts[i % len(hosts)] for i in range(args.num_servers)]
        places["worker"] = [hosts[i % len(hosts)] for i in range(args.num_workers)]
    else:
        root_uri = args.scheduler_host or LOCAL
        places = {"scheduler": [(None, root_uri)], "server": [(None, LOCAL)] * args.num_servers,
                  "worker": [(None, LOCAL)] * args.num_workers}
    port = args.port or free_port(LOCAL if not args.hosts else "")
    extra = {}
    for kv in args.env:
        k, sep, v = kv.partition("=")
        if not sep or not k:
            raise ValueError(f"--env wants NAME=VALUE, got {kv!r}")
        extra[k] = v
    if args.threads:
        extra.setdefault("OMP_NUM_THREADS", str(args.threads))
    nodes = []
    for role in ("scheduler", "server", "worker"):
        for i, (host, addr) in enumerate(places[role]):
            env = {"DMLC_ROLE": role, "DMLC_PS_ROOT_URI": root_uri, "DMLC_PS_ROOT_PORT": str(port),
                   "DMLC_NUM_SERVER": str(args.num_servers), "DMLC_NUM_WORKER": str(args.num_workers),
                   "DMLC_NODE_HOST": addr, **extra}
            if args.verbose:
                env["PS_VERBOSE"] = str(args.verbose)
            if role == "worker":
                argv = [py, "-m", args.module, *train_args, "--kvstore", args.kvstore]
            else:
                argv = [py, "-c", "import mxnet"]
            nodes.append(Node(role, i, host, addr, env, argv))
    return nodes, root_uri, port


def remote_command(node: Node, remote_dir: str) -> str:
    env = dict(node.env)
    env["PYTHONPATH"] = ":".join([remote_dir] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    assigns = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    return f"cd {shlex.quote(remote_dir)} && env {assigns} {shlex.join(node.argv)}"


class Job:
    def __init__(self, nodes, args):
        self.nodes = nodes
        self.args = args
        self.lock = threading.Lock()
        self.interrupted = 0

    # -- processes ------------------------------------------------------------------
    def _popen_args(self, node: Node) -> tuple:
        if node.host is None:
            env = dict(os.environ)
            env.update(node.env)
            env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
            env.setdefault("PYTHONUNBUFFERED", "1")
            return node.argv, env
        cmd = shlex.split(self.args.ssh) + [node.host, remote_command(node, self.args.remote_dir)]
        return cmd, dict(os.environ)

    def start(self, node: Node) -> None:
        cmd, env = self._popen_args(node)
        node.proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        node.thread = threading.Thread(target=self._relay, args=(node,), daemon=True)
        node.thread.start()

    def _relay(self, node: Node) -> None:
        prefix = f"[{node.tag}] ".encode()
        out = sys.stdout.buffer
        for line in iter(node.proc.stdout.readline, b""):
            line = line.replace(b"\r\n", b"\n")  # ssh -tt terminals
            if not line.endswith(b"\n"):
                line += b"\n"
            with self.lock:
                out.write(prefix + line)
                out.flush()
        node.proc.stdout.close()

    def say(self, msg: str) -> None:
        with self.lock:
            sys.stdout.write(f"[launch] {msg}\n")
            sys.stdout.flush()

    def send(self, nodes, sig) -> None:
        for n in nodes:
            if n.proc is not None and n.proc.poll() is None:
                try:
                    os.killpg(n.proc.pid, sig)
                except (ProcessLookupError, PermissionError):
                    pass

    def wait_all(self, nodes, seconds: float) -> bool:
        end = time.monotonic() + seconds
        for n in nodes:
            if n.proc is None:
                continue
            try:
                n.proc.wait(timeout=max(0.0, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                return False
        return True

    def stop(self, nodes, first=signal.SIGTERM, grace: float = 5.0) -> None:
        """``first`` to every process group, SIGKILL to what is left after ``grace`` seconds,
        then at most KILL_WAIT seconds more: bounded however the processes behave."""
        self.send(nodes, first)
        if not self.wait_all(nodes, grace):
            self.send(nodes, signal.SIGKILL)
            self.wait_all(nodes, KILL_WAIT)

    # -- supervision ----------------------------------------------------------------
    def _on_signal(self, signum, frame):
        self.interrupted += 1
        if self.interrupted > 1:  # second Ctrl-C: no more patience
            self.send(self.nodes, signal.SIGKILL)

    def run(self) -> int:
        a = self.args
        workers = [n for n in self.nodes if n.role == "worker"]
        services = [n for n in self.nodes if n.role != "worker"]
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        deadline = time.monotonic() + a.timeout if a.timeout else None
        rc = 0
        gone_since = None
        try:
            for n in self.nodes:
                self.start(n)
            while True:
                if self.interrupted:
                    self.say("interrupted: stopping the job")
                    self.stop(workers, first=signal.SIGINT, grace=a.grace)
                    rc = 130
                    break
                failed = [n for n in workers if n.proc.poll() not in (None, 0)]
                if failed:
                    n = failed[0]
                    self.say(f"{n.tag} failed with exit status {n.proc.returncode}: stopping the job")
                    rc = 1
                    break
                if all(n.proc.poll() == 0 for n in workers):
                    break
                gone = [n for n in services if n.proc.poll() is not None]
                # The scheduler and servers exit as soon as every worker has said goodbye,
                # which can be a moment before the worker processes themselves are gone.
                if gone and (gone[0].proc.returncode != 0 or gone_since is not None
                             and time.monotonic() - gone_since > a.grace):
                    n = gone[0]
                    self.say(f"{n.tag} exited (status {n.proc.returncode}) while workers still run: stopping the job")
                    rc = 1
                    break
                if gone and gone_since is None:
                    gone_since = time.monotonic()
                if deadline is not None and time.monotonic() > deadline:
                    self.say(f"timeout after {a.timeout:g} s: stopping the job")
                    rc = 124
                    break
                time.sleep(0.1)
            if rc == 0:
                # Rank 0 stops the servers on exit; the scheduler follows.
                if not self.wait_all(services, a.grace):
                    self.say(f"servers / scheduler still up {a.grace:g} s after the workers: stopping them")
                    self.stop(services)
            elif rc != 130:  # an interrupt has already given the workers their grace
                self.stop(self.nodes, grace=a.grace)
        finally:
            # Whatever is left (an exception above, or a service after an interrupt): no more grace.
            self.stop([n for n in self.nodes if n.proc is not None and n.proc.poll() is None], grace=0.5)
            end = time.monotonic() + RELAY_WAIT
            for n in self.nodes:
                if n.thread is not None:
                    n.thread.join(timeout=max(0.0, end - time.monotonic()))
            for s, h in old.items():
                signal.signal(s, h)
        if rc == 0:
            self.say(f"{len(workers)} worker(s) finished")
        return rc


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" in argv:
        i = argv.index("--")
        ours, train_args = argv[:i], argv[i + 1:]
    else:
        ours, train_args = argv, []
    ap = argparse.ArgumentParser(prog="python -m train_mx.launch", usage="%(prog)s -n N -s S [options] -- <train args>",
                                 description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="See the module docstring (python -m pydoc train_mx.launch) for the multi-host setup.")
    ap.add_argument("-n", "--num-workers", type=int, required=True)
    ap.add_argument("-s", "--num-servers", type=int, default=1)
    ap.add_argument("--hosts", default=None, help="file with one host per line ('HOST' or 'HOST ADDRESS'); workers and servers go round robin over them via ssh")
    ap.add_argument("--scheduler-host", default=None, help="address the scheduler is reached at (default 127.0.0.1, or the first host's address)")
    ap.add_argument("--port", type=int, default=0, help="scheduler port (default: a free one)")
    ap.add_argument("--timeout", type=float, default=0, help="seconds after which the whole job is killed (0: no limit)")
    ap.add_argument("--grace", type=float, default=20.0, help="seconds given to servers after the workers, and to the processes after Ctrl-C, --timeout or a failure before they are killed")
    ap.add_argument("--kvstore", default="dist_sync", choices=DIST_KVSTORES)
    ap.add_argument("--module", default="train_mx.train", help="worker module run with python -m (default train_mx.train)")
    ap.add_argument("--python", default=None, help="Python interpreter (default: this one; the same path on every host)")
    ap.add_argument("--remote-dir", default=os.getcwd(), help="checkout directory on the hosts (default: the current directory)")
    ap.add_argument("--ssh", default=DEFAULT_SSH, help=f"ssh command (default {DEFAULT_SSH!r})")
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="extra environment for every process (repeatable)")
    ap.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS per process (0: leave as is)")
    ap.add_argument("--verbose", type=int, default=0, choices=[0, 1, 2], help="PS_VERBOSE level of ps-lite")
    ap.add_argument("--dry-run", action="store_true", help="print the commands and exit")
    args = ap.parse_args(ours)
    if args.num_workers < 1 or args.num_servers < 1:
        ap.error("need at least one worker and one server")
    if not (0 <= args.timeout < math.inf and 0 <= args.grace < math.inf):  # NaN fails both
        ap.error("--timeout and --grace must be finite and >= 0")
    if not 0 <= args.port <= 65535:
        ap.error(f"--port must be in 0..65535 (0: a free one), got {args.port}")
    if args.threads < 0:
        ap.error(f"--threads must be >= 0 (0: leave OMP_NUM_THREADS as is), got {args.threads}")
    try:
        ssh = shlex.split(args.ssh)
    except ValueError as e:
        ap.error(f"--ssh {args.ssh!r}: {e}")
    # the programs every process needs, found before anything starts
    if args.python is not None and not args.hosts and shutil.which(args.python) is None:
        ap.error(f"--python {args.python}: no such program")
    if args.hosts and (not ssh or shutil.which(ssh[0]) is None):
        ap.error(f"--ssh {args.ssh!r}: no such program; install OpenSSH or pass --ssh")
    try:
        nodes, root_uri, port = plan(args, train_args)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    job = Job(nodes, args)
    if args.dry_run:
        for n in nodes:
            cmd, _ = job._popen_args(n)
            if n.host is None:
                env = " ".join(f"{k}={shlex.quote(v)}" for k, v in n.env.items())
                print(f"{n.tag}: env {env} {shlex.join(cmd)}")
            else:
                print(f"{n.tag}: {shlex.join(cmd)}")
        return 0
    job.say(f"scheduler {root_uri}:{port}, {args.num_servers} server(s), {args.num_workers} worker(s)"
            + (f" over {args.hosts}" if args.hosts else " on this machine"))
    try:
        return job.run()
    except OSError as e:  # a program that vanished between the check and the start
        print(f"error: cannot start {e.filename or 'a process'}: {e.strerror or e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
