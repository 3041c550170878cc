"""Python client for forkpool, the prefork PostgreSQL job runner.

    import forkpool
    fp = forkpool.Client()                  # $FORKPOOL_SOCKET, else /run/forkpool/forkpool.sock
    fp.run("add", a=2, b=40)                # {"rows": [{"sum": 42}], ...}
    fp.run_many([("add", {"a": i}) for i in range(1000)])   # pipelined, results in order
    job = fp.enqueue("add", {"a": 2, "b": 40})             # durable: stored, run later
    fp.result(job, wait=30).rows                           # [{"sum": 42}] once completed

`Client` is safe to share between threads (a connection per thread) and with forked
`multiprocessing` children (a child opens its own connection); `AsyncClient` is its asyncio
twin. Every failure is a `ForkpoolError`; an error the service answered is the
`ServiceError` subclass of its kind (`DbError`, `QueueFull`, ...).
"""

from . import errors
from .aio import AsyncClient
from .client import Client
from .durable import EnqueuedJob, JobResult
from .errors import *  # noqa: F401,F403  (every error class, listed in errors.__all__)
from .protocol import DEFAULT_SOCKET

__version__ = "0.1.0"

__all__ = ["AsyncClient", "Client", "DEFAULT_SOCKET", "EnqueuedJob", "JobResult"]
__all__ += errors.__all__
