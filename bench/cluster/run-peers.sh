#!/bin/sh
# The Python side of `make bench-cluster`: RQ, Celery and Dask distributed
# on the cluster workloads (see README.md here). Installs what they need
# the way the rest of the project does, through .ci/deps.sh, then runs
# peers.py with Debian's python3 (the one that has Debian's python3-*
# packages; a pyenv python3 on PATH lacks them). Arguments go to peers.py
# (--quick, --redis URL, --runs N, ...). JSON on stdout, progress on stderr.
set -e
here=$(cd "$(dirname "$0")" && pwd)
# apt-get prints on stdout; keep stdout for the JSON.
sh "$here/../../.ci/deps.sh" python3-rq python3-celery python3-redis \
  python3-distributed redis-server >&2
exec /usr/bin/python3 "$here/peers.py" "$@"
