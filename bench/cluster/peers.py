"""The Python side of `make bench-cluster` (issue 21, point 9): the cluster
workloads through RQ, Celery and Dask distributed, two worker processes
each, on this machine, against one loopback redis-server.

    /usr/bin/python3 bench/cluster/peers.py [--quick] [--redis URL] ...

Prints one JSON object on stdout (README.md lists its keys) and progress on
stderr. It starts its own redis-server unless given --redis, starts and
stops every worker itself, and reaps every process it started, also on
Ctrl-C, SIGTERM or an error. Run it with Debian's /usr/bin/python3, which
has python3-rq, python3-celery and python3-distributed.
"""

import argparse
import ctypes
import gc
import json
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from urllib.parse import urlsplit

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import peer_tasks  # noqa: E402  (needs HERE on the path)

clock = time.perf_counter
PY = sys.executable

ROWS = ("w1_tps", "w1_map_tps", "w4_ms",
        "recover_kill_s", "recover_stop_s", "recover_kill_child_s")
PEERS = ("rq", "celery", "dask")

# Failure detection for a hung worker in Dask: the scheduler drops a worker
# it has not heard from for this long (heartbeats come every 0.5 s with up
# to 10 workers). 1 s is the budget loom gets with `lease = 1`.
DASK_WORKER_TTL = "1s"
# A recovery row is repeated (up to --runs) only while it stays this cheap.
CHEAP_RECOVERY_S = 30.0


def log(msg):
    print("peers: " + msg, file=sys.stderr, flush=True)


class RowError(Exception):
    """A row that cannot give a figure; the message is the reason printed
    beside the null."""


# --------------------------------------------------------------------------
# Processes. Every worker runs in a session of its own (a Ctrl-C at the
# terminal reaches only this script, which then stops them in order), dies
# with this script if it is killed (PR_SET_PDEATHSIG), and this script is a
# subreaper, so the grandchildren of a killed worker become its children and
# are reaped here too.

_libc = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36


def _in_child():
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def children_map():
    """{ppid: [pid, ...]} of every process, read from /proc."""
    kids = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry) as f:
                stat = f.read()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def tree(root):
    """root and its descendants, parents before children."""
    kids = children_map()
    out, todo = [], [root]
    while todo:
        pid = todo.pop(0)
        out.append(pid)
        todo.extend(kids.get(pid, ()))
    return out


def signal_all(pids, sig):
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


class Proc:
    def __init__(self, name, popen, logpath):
        self.name, self.popen, self.log = name, popen, logpath
        self.pid = popen.pid

    def alive(self):
        return self.popen.poll() is None

    def tail(self, lines=15):
        try:
            with open(self.log, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""


class Procs:
    """Every process this script starts, and their orderly end."""

    def __init__(self, logdir):
        self.logdir = logdir
        self.live = []
        self.seen = set()   # every pid of every tree, to reap orphans

    def start(self, name, argv, env=None):
        logpath = os.path.join(self.logdir, "%s.log" % name)
        with open(logpath, "ab") as logf:
            popen = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=logf,
                stderr=subprocess.STDOUT, cwd=HERE, env=env,
                start_new_session=True, preexec_fn=_in_child)
        proc = Proc(name, popen, logpath)
        self.live.append(proc)
        return proc

    def stop(self, proc, grace=5.0):
        """SIGCONT (a stopped worker cannot act on SIGTERM), SIGTERM to the
        root, up to `grace` seconds for it to end its own children, then
        SIGKILL to whatever is left of its tree; everything reaped."""
        pids = tree(proc.pid) if proc.alive() else [proc.pid]
        self.seen.update(pids)
        if proc.alive():
            signal_all(pids, signal.SIGCONT)
            signal_all([proc.pid], signal.SIGTERM)
            try:
                proc.popen.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        pids = list(dict.fromkeys(pids + tree(proc.pid)))
        self.seen.update(pids)
        signal_all(pids, signal.SIGKILL)
        proc.popen.wait()
        if proc in self.live:
            self.live.remove(proc)
        self.reap_orphans()

    def reap_orphans(self, bound=5.0):
        """Reaps the descendants that became our children (we are a
        subreaper) once their parent died; they were all sent SIGKILL."""
        deadline = time.monotonic() + bound
        mine = {p.pid for p in self.live}
        for pid in sorted(self.seen - mine):
            while True:
                try:
                    done, _ = os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    break       # not our child (reaped by its own parent)
                if done or time.monotonic() > deadline:
                    break
                time.sleep(0.01)
        self.seen &= mine

    def stop_all(self):
        # Workers first, redis-server (started first) last.
        for proc in reversed(list(self.live)):
            try:
                self.stop(proc)
            except Exception as e:  # keep going: every process must end
                log("stopping %s: %s" % (proc.name, e))


def wait_until(what, cond, bound, procs=(), step=0.05):
    """Polls cond() until it is true, for at most `bound` seconds; fails
    early, with the log's tail, if one of `procs` exits meanwhile."""
    deadline = time.monotonic() + bound
    while True:
        if cond():
            return
        for p in procs:
            if not p.alive():
                raise RowError("%s: %s exited with %s:\n%s"
                               % (what, p.name, p.popen.returncode, p.tail()))
        if time.monotonic() > deadline:
            tails = "".join("--- %s\n%s" % (p.name, p.tail()) for p in procs)
            raise RowError("%s: not within %g s\n%s" % (what, bound, tails))
        time.sleep(step)


# --------------------------------------------------------------------------
# Redis

def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_loopback(url):
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return
    if parts.scheme != "redis" or parts.hostname not in (
            "127.0.0.1", "localhost", "::1"):
        raise SystemExit("peers: --redis must be a loopback redis:// URL or "
                         "a unix:// socket, not %r" % url)


def check_reachable(url):
    import redis
    client = redis.Redis.from_url(url, socket_connect_timeout=5,
                                  socket_timeout=5)
    try:
        client.ping()
    except redis.exceptions.RedisError as e:
        raise SystemExit("peers: cannot reach Redis at %s: %s"
                         % (url.split("@")[-1], e))
    finally:
        client.close()


def start_redis(procs, tmp):
    exe = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not os.path.exists(exe):
        raise SystemExit("peers: redis-server is missing; run "
                         "bench/cluster/run-peers.sh, which installs it")
    import redis
    for attempt in range(5):
        port = free_port()    # a race with another process is retried
        proc = procs.start("redis-%d" % port, [
            exe, "--bind", "127.0.0.1", "--port", str(port),
            "--save", "", "--appendonly", "no", "--dir", tmp,
            "--daemonize", "no"])
        url = "redis://127.0.0.1:%d/0" % port
        client = redis.Redis.from_url(url, socket_connect_timeout=1)

        def up():
            try:
                return client.ping()
            except redis.exceptions.ConnectionError:
                return False
        try:
            wait_until("redis-server", up, 10, [proc])
            return url
        except RowError as e:
            log("redis-server on port %d did not start (%s); retrying"
                % (port, str(e).splitlines()[0]))
            procs.stop(proc)
    raise SystemExit("peers: could not start redis-server")


# --------------------------------------------------------------------------
# The peers. Each starts two workers (start), runs the rows, and stops them
# (stop). `recover` selects the peer's settings for fast recovery; `child`
# the worker layout in which the task runs in a child process supervised by
# the worker (needed only for the recover_kill_child_s row).

class Peer:
    name = "?"

    def __init__(self, bench):
        self.bench = bench
        self.workers = []

    def env(self):
        env = dict(os.environ)
        env["PYTHONPATH"] = HERE + (
            os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        return env

    def stop(self):
        # Celery's AsyncResult talks to Redis when it is collected: collect
        # the dead ones (in cycles with tracebacks) while Redis is up.
        gc.collect()
        for w in self.workers:
            self.bench.procs.stop(w)
        self.workers = []

    def instance_of(self, pid):
        """The worker whose process tree holds pid."""
        for w in self.workers:
            if pid in tree(w.pid):
                return w
        raise RowError("pid %d belongs to none of the %s workers"
                       % (pid, self.name))


class RQPeer(Peer):
    name = "rq"
    how = {
        "workers": "two `rq worker` processes, class SimpleWorker (runs each "
                   "job in the worker process, no fork per job)",
        "w1_tps": "Queue.enqueue one job per call, then Job.return_value of "
                  "each, polled (RQ has no blocking wait for a result)",
        "w1_map_tps": "RQ has no map and no chunking: Queue.enqueue_many "
                      "(one pipelined enqueue of all jobs, still one job "
                      "per call), collected as in W1",
        "w4_ms": "enqueue, then Job.return_value polled every 0.5 ms",
        "recover": "job_timeout=10, Retry(max=3); SimpleWorker",
        "recover_kill_child_s": "default forking Worker, Retry(max=3): the "
                                "work horse running the job is killed, its "
                                "worker sees it die and retries the job",
    }

    def start(self, recover=False, child=False):
        from redis import Redis
        from rq import Queue
        url = self.bench.redis_url
        qname = "peers-rq-" + secrets.token_hex(4)
        self.conn = Redis.from_url(url)
        self.q = Queue(qname, connection=self.conn)
        cls = "rq.worker.Worker" if child else "rq.worker.SimpleWorker"
        for i in range(2):
            self.workers.append(self.bench.procs.start(
                "%s-%d" % (qname, i),
                [PY, "-m", "rq.cli", "worker", "--url", url,
                 "--worker-class", cls, "--path", HERE,
                 "--name", "%s-%d" % (qname, i), "--logging_level", "WARNING",
                 "--disable-job-desc-logging", qname],
                env=self.env()))
        from rq import Worker
        wait_until("rq workers", lambda: Worker.count(queue=self.q) >= 2,
                   60, self.workers)

    def stop(self):
        super().stop()
        if getattr(self, "conn", None) is not None:
            self.conn.close()
            self.conn = None

    def wait(self, job, deadline, poll=0.0005):
        """The job's result, polling; RowError when it failed or when the
        deadline passes."""
        from rq.job import JobStatus
        while True:
            v = job.return_value(refresh=True)
            if v is not None:
                return v
            status = job.get_status(refresh=True)
            if status == JobStatus.FAILED:
                raise RowError("job failed: %s" % job.exc_info)
            if time.monotonic() > deadline:
                raise RowError("not within the bound (job %s)" % status)
            time.sleep(poll)

    def collect(self, jobs, deadline):
        return [self.wait(j, deadline, poll=0.001) for j in jobs]

    def w1(self, n, deadline):
        jobs = [self.q.enqueue(peer_tasks.add, i, i) for i in range(n)]
        return self.collect(jobs, deadline)

    def w1_map(self, n, chunk, deadline):
        from rq import Queue
        jobs = self.q.enqueue_many(
            [Queue.prepare_data(peer_tasks.add, (i, i)) for i in range(n)])
        return self.collect(jobs, deadline)

    def w4_once(self, deadline):
        return self.wait(self.q.enqueue(peer_tasks.add, 1, 2), deadline)

    def submit_probe(self, key):
        from rq import Retry
        return self.q.enqueue(peer_tasks.probe, self.bench.redis_url, key,
                              job_timeout=10, retry=Retry(max=3))

    def wait_probe(self, job, cap):
        try:
            return self.wait(job, time.monotonic() + cap, poll=0.005)
        except RowError:
            raise RowError("not within %g s (job %s)"
                           % (cap, job.get_status(refresh=True)))


class CeleryPeer(Peer):
    name = "celery"
    how = {
        "workers": "two `celery worker` nodes, prefork pool, concurrency 1 "
                   "(a main process and one pool child each); Redis broker "
                   "and Redis result backend",
        "w1_tps": "task.delay per call, then AsyncResult.get of each",
        "w1_map_tps": "task.chunks(pairs, 256).apply_async(): a group of "
                      "celery.starmap tasks of 256 calls each; each chunk's "
                      "AsyncResult.get(), as in W1",
        "w4_ms": "task.delay(...).get()",
        "recover": "task_acks_late, task_reject_on_worker_lost, "
                   "worker_prefetch_multiplier=1, visibility_timeout=5",
        "recover_kill_child_s": "the pool child running the task is "
                                "killed; its worker's main process rejects "
                                "the message back to the queue",
    }

    def start(self, recover=False, child=False):
        import peer_celery
        url = self.bench.redis_url
        qname = "peers-celery-" + secrets.token_hex(4)
        self.app = peer_celery.make_app(url, qname, recover)
        self.t = peer_celery.tasks(self.app)
        env = self.env()
        env.update(PEERS_REDIS=url, PEERS_QUEUE=qname,
                   PEERS_RECOVER="1" if recover else "0")
        names = ["%s-%d@%s" % (qname, i, socket.gethostname())
                 for i in range(2)]
        for i, node in enumerate(names):
            self.workers.append(self.bench.procs.start(
                "%s-%d" % (qname, i),
                [PY, "-m", "celery", "-A", "peer_celery", "worker",
                 "--pool", "prefork", "--concurrency", "1", "-n", node,
                 "-Q", qname, "-l", "WARNING"], env=env))

        def both_up():
            replies = self.app.control.ping(destination=names, timeout=0.5)
            return len(replies) >= 2
        wait_until("celery workers", both_up, 60, self.workers)

    def stop(self):
        super().stop()
        if getattr(self, "app", None) is not None:
            self.app.close()
            self.app = None

    def left(self, deadline):
        return max(0.001, deadline - time.monotonic())

    def w1(self, n, deadline):
        add = self.t["add"]
        rs = [add.delay(i, i) for i in range(n)]
        return [r.get(timeout=self.left(deadline)) for r in rs]

    def w1_map(self, n, chunk, deadline):
        add = self.t["add"]
        res = add.chunks([(i, i) for i in range(n)], chunk).apply_async()
        # Each chunk's result as W1 collects them (pub/sub): the group's own
        # get() polls the backend every 0.5 s by default, a floor of up to
        # 0.5 s on the whole map (a third of it at 20,000 calls).
        return [v for r in res.results
                for v in r.get(timeout=self.left(deadline))]

    def w4_once(self, deadline):
        return self.t["add"].delay(1, 2).get(timeout=self.left(deadline))

    def submit_probe(self, key):
        return self.t["probe"].delay(self.bench.redis_url, key)

    def wait_probe(self, res, cap):
        from celery.exceptions import TimeoutError as CeleryTimeout
        try:
            return res.get(timeout=cap)
        except CeleryTimeout:
            raise RowError("not within %g s" % cap)


class DaskPeer(Peer):
    name = "dask"
    how = {
        "workers": "a dask-scheduler and two `dask-worker --nthreads 1` "
                   "processes, each under its nanny (default); Dask uses no "
                   "Redis (the recovery task reaches Redis only to say it "
                   "started)",
        "w1_tps": "Client.submit(pure=False) per call, then Client.gather",
        "w1_map_tps": "dask.bag.from_sequence(pairs, partition_size=256)"
                      ".starmap(add).compute(): one task per 256 calls "
                      "(Client.map has no chunking; its batch_size only "
                      "batches the submission, one task per call)",
        "w4_ms": "Client.submit(...).result()",
        "recover": "distributed.scheduler.worker-ttl=%s (default 5 minutes); "
                   "nanny" % DASK_WORKER_TTL,
        "recover_kill_child_s": "the worker process (child of its nanny) is "
                                "killed; the nanny stays",
    }

    def start(self, recover=False, child=False):
        from distributed import Client
        tag = "dask-" + secrets.token_hex(4)
        tmp = os.path.join(self.bench.tmp, tag)
        os.makedirs(tmp)
        sfile = os.path.join(tmp, "scheduler.json")
        env = self.env()
        env["DASK_CONFIG"] = tmp   # no ~/.config/dask written or read
        if recover:
            env["DASK_DISTRIBUTED__SCHEDULER__WORKER_TTL"] = DASK_WORKER_TTL
        # Even with --no-dashboard, the scheduler and each worker serve HTTP
        # (health, metrics) on the dashboard address, by default on every
        # interface (the scheduler on :8787): keep them on loopback.
        sched = self.bench.procs.start(tag + "-scheduler", [
            PY, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
            "--port", "0", "--no-dashboard", "--dashboard-address",
            "127.0.0.1:0", "--scheduler-file", sfile],
            env=env)
        self.workers.append(sched)
        wait_until("dask-scheduler", lambda: os.path.exists(sfile), 60,
                   [sched])
        for i in range(2):
            self.workers.append(self.bench.procs.start(
                "%s-%d" % (tag, i),
                [PY, "-m", "distributed.cli.dask_worker",
                 "--scheduler-file", sfile, "--host", "127.0.0.1",
                 "--nthreads", "1", "--nworkers", "1", "--nanny",
                 "--no-dashboard", "--dashboard-address", "127.0.0.1:0",
                 "--local-directory", os.path.join(tmp, "w%d" % i)],
                env=env))
        # The file can appear before it is complete: read it when it parses.
        def address():
            try:
                with open(sfile) as f:
                    return json.load(f)["address"]
            except (OSError, ValueError, KeyError):
                return None
        wait_until("dask scheduler file", lambda: address() is not None, 10,
                   [sched])
        self.client = Client(address(), set_as_default=False, timeout=30)
        self.client.wait_for_workers(2, timeout=60)

    def stop(self):
        if getattr(self, "client", None) is not None:
            self.client.close()
            self.client = None
        super().stop()

    def instance_of(self, pid):
        w = super().instance_of(pid)
        if w is self.workers[0]:
            raise RowError("the task ran in the scheduler?")
        return w

    def w1(self, n, deadline):
        futs = [self.client.submit(peer_tasks.add, i, i, pure=False)
                for i in range(n)]
        return self.client.gather(futs)

    def w1_map(self, n, chunk, deadline):
        import dask.bag as db
        bag = db.from_sequence([(i, i) for i in range(n)],
                               partition_size=chunk)
        return bag.starmap(peer_tasks.add).compute(scheduler=self.client)

    def w4_once(self, deadline):
        return self.client.submit(peer_tasks.add, 1, 2, pure=False).result(
            timeout=max(0.001, deadline - time.monotonic()))

    def submit_probe(self, key):
        return self.client.submit(peer_tasks.probe, self.bench.redis_url,
                                  key, pure=False)

    def wait_probe(self, fut, cap):
        from distributed import TimeoutError as DaskTimeout
        try:
            return fut.result(timeout=cap)
        except (DaskTimeout, TimeoutError):
            raise RowError("not within %g s (future %s)" % (cap, fut.status))


PEER_CLASSES = {"rq": RQPeer, "celery": CeleryPeer, "dask": DaskPeer}


# --------------------------------------------------------------------------
# The rows

class Bench:
    def __init__(self, args):
        self.args = args
        self.tmp = tempfile.mkdtemp(prefix="loom-peers-")
        self.procs = Procs(self.tmp)
        self.redis_url = None
        self.out = {}

    def record(self, peer, row, value, samples=None, why=None):
        d = self.out[peer]
        d[row] = value
        if samples is not None:
            d["samples"][row] = samples
        if why is not None:
            d["why"][row] = why

    def guarded(self, peer, row, fn):
        """Runs one row; a failure becomes null plus its reason, and the
        benchmark goes on with the next row."""
        try:
            fn()
        except Exception as e:
            self.fail(peer, row, e)

    def fail(self, peer, row, e):
        """Records the row as null with the reason e gives."""
        if isinstance(e, RowError):
            log("%s %s: %s" % (peer, row, e))
            self.record(peer, row, None, why=str(e).splitlines()[0])
        else:
            log("%s %s failed:\n%s" % (peer, row, "".join(
                traceback.format_exception(type(e), e, e.__traceback__))))
            self.record(peer, row, None,
                        why="error: %s: %s" % (type(e).__name__, e))

    # W1 and W1-map: tasks per second, median of the runs.
    def throughput(self, peers):
        a = self.args
        n = a.tasks
        bound = max(120.0, n / 20.0)   # a peer below 20 tasks/s is broken
        expect = [2 * i for i in range(n)]
        for row, method in (("w1_tps", "w1"), ("w1_map_tps", "w1_map")):
            if row not in a.rows:
                continue
            samples = {p.name: [] for p in peers}
            failed = set()
            for r in range(a.runs):
                for p in peers:
                    if p.name in failed:
                        continue
                    t0 = clock()
                    try:
                        if method == "w1":
                            vals = p.w1(n, time.monotonic() + bound)
                        else:
                            vals = p.w1_map(n, a.chunk,
                                            time.monotonic() + bound)
                        dt = clock() - t0
                        if list(vals) != expect:
                            raise RowError("wrong results")
                    except Exception as e:
                        failed.add(p.name)
                        self.fail(p.name, row, e)
                        continue
                    samples[p.name].append(n / dt)
                    log("%s %s run %d: %.0f tasks/s"
                        % (p.name, row, r + 1, n / dt))
            for name, s in samples.items():
                if name not in failed:
                    self.record(name, row, round(statistics.median(s), 1),
                                [round(x, 1) for x in s])

    # W4: one submit and wait, idle system; median per run, median of runs.
    def latency(self, peers):
        a = self.args
        if "w4_ms" not in a.rows:
            return
        meds = {p.name: [] for p in peers}
        failed = set()
        for r in range(a.runs):
            for p in peers:
                if p.name in failed:
                    continue
                try:
                    times = []
                    for k in range(a.w4_warm + a.w4_samples):
                        t0 = clock()
                        v = p.w4_once(time.monotonic() + 30)
                        dt = clock() - t0
                        if v != 3:
                            raise RowError("wrong result %r" % (v,))
                        if k >= a.w4_warm:
                            times.append(dt * 1e3)
                except Exception as e:
                    failed.add(p.name)
                    self.fail(p.name, "w4_ms", e)
                    continue
                meds[p.name].append(statistics.median(times))
                log("%s w4 run %d: median %.2f ms of %d"
                    % (p.name, r + 1, meds[p.name][-1], len(times)))
        for name, m in meds.items():
            if name not in failed:
                self.record(name, "w4_ms", round(statistics.median(m), 3),
                            [round(x, 3) for x in m])

    # Recovery: time from the kill (or stop) to the task's result in the
    # caller, each run on two fresh workers with the recovery settings.
    def recovery(self, peer, row):
        a = self.args
        child = row == "recover_kill_child_s"
        action = "stop" if row == "recover_stop_s" else "kill"
        import redis
        r = redis.Redis.from_url(self.redis_url)
        times = []
        try:
            for run in range(a.runs):
                try:
                    dt = self.recover_once(peer, row, r, child, action)
                except RowError as e:
                    if times:   # say what the earlier runs gave
                        raise RowError("run %d: %s (earlier runs: %s s)"
                                       % (run + 1, e,
                                          ", ".join("%.3f" % t
                                                    for t in times)))
                    raise
                times.append(dt)
                if dt > CHEAP_RECOVERY_S:
                    break
        finally:
            r.close()
        self.record(peer.name, row, round(statistics.median(times), 3),
                    [round(x, 3) for x in times])

    def recover_once(self, peer, row, r, child, action):
        key = "peers:probe:%s:%s:%s" % (peer.name, row, secrets.token_hex(4))
        peer.start(recover=True, child=child)
        try:
            handle = peer.submit_probe(key)
            got = r.blpop(key + ":started", timeout=60)
            if got is None:
                raise RowError("the task never started")
            pid, n = map(int, got[1].split())
            w = peer.instance_of(pid)
            if child and pid == w.pid:
                raise RowError("the task runs in the worker's main "
                               "process; no child to kill")
            pids = [pid] if child else tree(w.pid)
            self.procs.seen.update(pids)
            signal_all(pids, signal.SIGSTOP if action == "stop"
                       else signal.SIGKILL)
            t0 = clock()
            v = peer.wait_probe(handle, self.args.cap)
            dt = clock() - t0
            del handle
            if not (isinstance(v, int) and v >= 2):
                raise RowError("the task gave %r, not a re-delivery" % (v,))
            log("%s %s: %.3f s (delivery %d, %s)"
                % (peer.name, row, dt, v, self.where(peer, r, key, w)))
            return dt
        finally:
            peer.stop()

    def where(self, peer, r, key, killed):
        """Which worker ran the last delivery, for the progress line."""
        pid = int(r.lrange(key + ":started", -1, -1)[0].split()[0])
        for w in peer.workers:
            if pid in tree(w.pid):
                return "on the same worker" if w is killed \
                    else "on the other worker"
        return "in a process that has ended since (pid %d)" % pid

    def run(self):
        a = self.args
        if a.redis:
            self.redis_url = a.redis
            check_reachable(a.redis)
        else:
            self.redis_url = start_redis(self.procs, self.tmp)
        log("redis at %s; temp files in %s" % (self.redis_url, self.tmp))
        for name in a.peers:
            self.out[name] = {row: None for row in ROWS}
            self.out[name].update(how=dict(PEER_CLASSES[name].how),
                                  samples={}, why={})
            for row in ROWS:
                if row not in a.rows:
                    self.out[name]["why"][row] = "not run (--rows)"
        peers = [PEER_CLASSES[name](self) for name in a.peers]

        # W1, W1-map and W4: the three peers' workers up side by side, the
        # runs interleaved so that machine noise spreads over every peer.
        if {"w1_tps", "w1_map_tps", "w4_ms"} & set(a.rows):
            ready = []
            try:
                for p in peers:
                    log("starting %s workers" % p.name)
                    try:
                        p.start()
                        ready.append(p)
                    except Exception as e:
                        for row in ("w1_tps", "w1_map_tps", "w4_ms"):
                            if row in a.rows:
                                self.fail(p.name, row, e)
                for p in ready:   # warm-up: imports, connections, caches
                    try:
                        p.w1(min(200, a.tasks), time.monotonic() + 60)
                        p.w1_map(min(2 * a.chunk, a.tasks), a.chunk,
                                 time.monotonic() + 60)
                    except Exception as e:
                        log("%s warm-up failed: %s" % (p.name, e))
                self.throughput(ready)
                self.latency(ready)
            finally:
                for p in ready:
                    p.stop()

        for row in ("recover_kill_s", "recover_stop_s",
                    "recover_kill_child_s"):
            if row not in a.rows:
                continue
            for p in peers:
                log("%s %s (cap %g s)" % (p.name, row, a.cap))
                self.guarded(p.name, row, lambda: self.recovery(p, row))

    def meta(self, started, t0, load0):
        import celery
        import dask
        import distributed
        import redis
        import rq
        info = {}
        try:
            c = redis.Redis.from_url(self.redis_url)
            info = c.info("server")
            c.close()
        except Exception:
            pass
        a = self.args
        return {
            "started": started,
            "seconds": round(time.monotonic() - t0, 1),
            "quick": a.quick,
            "tasks": a.tasks, "chunksize": a.chunk, "runs": a.runs,
            "w4_samples": a.w4_samples, "w4_warmup": a.w4_warm,
            "recovery_cap_s": a.cap,
            "workers_per_peer": 2,
            "redis": "own redis-server on loopback" if not a.redis
                     else "given with --redis",
            "redis_version": info.get("redis_version"),
            "python": sys.version.split()[0], "python_exe": PY,
            "versions": {"rq": rq.__version__, "celery": celery.__version__,
                         "redis-py": redis.__version__,
                         "dask": dask.__version__,
                         "distributed": distributed.__version__},
            "cores": os.cpu_count(),
            "loadavg_start": [round(x, 2) for x in load0],
            "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        }


def parse(argv):
    ap = argparse.ArgumentParser(
        description="RQ, Celery and Dask on the cluster workloads (JSON on "
                    "stdout, progress on stderr)")
    ap.add_argument("--quick", action="store_true",
                    help="a short run (2,000 tasks, one run, 10 s cap)")
    ap.add_argument("--redis", metavar="URL",
                    help="use this loopback Redis (redis://127.0.0.1:PORT/DB "
                         "or unix:///path) instead of starting one")
    ap.add_argument("--peers", default=",".join(PEERS),
                    help="comma-separated subset of %s" % ",".join(PEERS))
    ap.add_argument("--rows", default=",".join(ROWS),
                    help="comma-separated subset of %s" % ",".join(ROWS))
    ap.add_argument("--tasks", type=int, help="W1 tasks (default 20000)")
    ap.add_argument("--chunk", type=int, default=256,
                    help="chunk size of the map row (default 256)")
    ap.add_argument("--runs", type=int, help="runs per row (default 3)")
    ap.add_argument("--w4-samples", type=int,
                    help="W4 timed calls per run (default 100)")
    ap.add_argument("--cap", type=float,
                    help="longest wait for a recovery, seconds (default 120)")
    a = ap.parse_args(argv)
    q = a.quick
    a.tasks = a.tasks or (2000 if q else 20000)
    a.runs = a.runs or (1 if q else 3)
    a.w4_samples = a.w4_samples or (30 if q else 100)
    a.w4_warm = 5 if q else 20
    a.cap = a.cap or (10.0 if q else 120.0)
    a.peers = [p for p in a.peers.split(",") if p]
    a.rows = [r for r in a.rows.split(",") if r]
    for p in a.peers:
        if p not in PEERS:
            ap.error("unknown peer %r (known: %s)" % (p, ", ".join(PEERS)))
    for r in a.rows:
        if r not in ROWS:
            ap.error("unknown row %r (known: %s)" % (r, ", ".join(ROWS)))
    if a.tasks < 1 or a.runs < 1 or a.w4_samples < 1 or a.chunk < 1 \
            or a.cap <= 0:
        ap.error("--tasks, --runs, --w4-samples, --chunk and --cap must be "
                 "positive")
    if a.redis:
        check_loopback(a.redis)
    return a


def check_imports():
    missing = []
    for mod, pkg in (("rq", "python3-rq"), ("celery", "python3-celery"),
                     ("redis", "python3-redis"),
                     ("distributed", "python3-distributed")):
        try:
            __import__(mod)
        except ImportError:
            missing.append(pkg)
    if missing:
        raise SystemExit(
            "peers: %s lacks %s; run it with Debian's /usr/bin/python3 "
            "through bench/cluster/run-peers.sh, which installs them"
            % (PY, " ".join(missing)))


def main(argv):
    a = parse(argv)
    check_imports()
    # Ctrl-C and SIGTERM end the run through the finally below (SIGINT also
    # when the shell that started us in the background ignored it).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    bench = Bench(a)
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    t0, load0 = time.monotonic(), os.getloadavg()
    try:
        bench.run()
        result = dict(bench.out)
        result["meta"] = bench.meta(started, t0, load0)
    finally:
        # A second Ctrl-C must not cut the cleanup short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        bench.procs.stop_all()
        shutil.rmtree(bench.tmp, ignore_errors=True)
    json.dump(result, sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        log("interrupted; every process it started is stopped")
        sys.exit(130)
