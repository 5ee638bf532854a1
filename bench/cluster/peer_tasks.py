"""The task functions every peer runs (RQ and Dask import them by name;
peer_celery.py wraps them as Celery tasks). Plain functions, no peer
imports, so a worker of one peer never loads another peer's library.
"""

import os
import time


def add(x, y):
    """W1 and W4: a tiny task."""
    return x + y


def add_chunk(pairs):
    """One chunk of W1's map where the peer has no chunking of its own:
    the same calls, made in one task, as loom's map with chunksize does."""
    return [x + y for x, y in pairs]


def whoami():
    """(pid, process group) of the process that runs tasks."""
    return os.getpid(), os.getpgrp()


def probe(redis_url, key, hold=600.0):
    """The recovery task. It counts its deliveries in Redis and says where it
    runs (`<pid> <delivery>` pushed on `<key>:started`), so the caller kills
    or stops the right process while the task certainly runs, with no sleep
    race. The first delivery then stays in the task (`hold` seconds, far past
    any cap) until its process is killed or stopped; a later delivery returns
    at once, so the time the caller measures is detection plus re-delivery,
    not the task's own length. Returns the delivery number."""
    import redis  # here, not at the top: only the recovery rows need it
    r = redis.Redis.from_url(redis_url)
    try:
        n = r.incr(key + ":runs")
        r.rpush(key + ":started", "%d %d" % (os.getpid(), n))
    finally:
        r.close()
    if n == 1:
        time.sleep(hold)
    return n
