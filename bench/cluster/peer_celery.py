"""The Celery app of the benchmark, for the caller (make_app) and for the
workers (`celery -A peer_celery worker`, configured by the environment
variables that peers.py sets: PEERS_REDIS, PEERS_QUEUE, PEERS_RECOVER).
"""

import os
from urllib.parse import urlsplit

from celery import Celery

import peer_tasks


def celery_url(url):
    """Celery and kombu spell a Unix socket `redis+socket:///path`."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return "redis+socket://" + parts.path
    return url


def make_app(redis_url, queue, recover):
    """Celery with the Redis broker and result backend. `recover` adds the
    settings Celery documents for not losing a task whose worker dies
    (README.md says which and why); without it Celery keeps its defaults."""
    url = celery_url(redis_url)
    app = Celery("peers", broker=url, backend=url, set_as_current=False)
    conf = dict(
        task_default_queue=queue,
        result_expires=3600,
        worker_hijack_root_logger=False,
    )
    if recover:
        conf.update(
            task_acks_late=True,
            task_reject_on_worker_lost=True,
            worker_prefetch_multiplier=1,
            broker_transport_options={"visibility_timeout": 5},
        )
    app.conf.update(conf)
    app.task(name="peers.add")(peer_tasks.add)
    app.task(name="peers.whoami")(peer_tasks.whoami)
    app.task(name="peers.probe")(peer_tasks.probe)
    return app


def tasks(app):
    return {name.split(".", 1)[1]: app.tasks[name]
            for name in ("peers.add", "peers.whoami", "peers.probe")}


if "PEERS_REDIS" in os.environ:
    # The worker side: `celery -A peer_celery worker` finds this app.
    app = make_app(os.environ["PEERS_REDIS"], os.environ["PEERS_QUEUE"],
                   os.environ.get("PEERS_RECOVER") == "1")
