"""The broker as the rest of pneumoscan sees it: the queue its tasks go to, and how many wait there."""

from __future__ import annotations

QUEUE = "celery"  # Celery's default queue name; every pneumoscan task goes there (worker/app.py sets it)
DEFAULT_URL = "redis://127.0.0.1:6379/0"  # the broker a Celery app falls back on when none is configured


class BrokerUnavailable(ConnectionError):
    """The broker did not answer (an OSError, so callers that expect a network failure catch it)."""


def queue_depth(broker_url: str, queue: str = QUEUE, *, timeout: float = 1.0) -> int:
    """Messages waiting in ``queue`` on the Redis broker at ``broker_url`` (not those a worker holds).

    Read with a plain Redis client and short timeouts, so neither a metrics scrape nor the outbox
    reaper waits on Celery's connection retries. kombu's Redis transport keeps a queue as a list of
    the same name (tasks are sent without a priority), and Redis keeps no empty lists, so a queue
    that does not exist holds nothing. Raises ``BrokerUnavailable`` when the broker does not answer.
    """
    import redis

    try:
        client = redis.Redis.from_url(broker_url, socket_timeout=timeout, socket_connect_timeout=timeout)
        try:
            return int(client.llen(queue))
        finally:
            client.close()
    except (redis.RedisError, OSError) as exc:
        raise BrokerUnavailable(f"the broker's queue {queue!r} cannot be read: {exc}") from exc
