"""Redis backends: store, payload store and schema registry over one connection pool.

```python
async with cordtrio.backends.redis.connect("redis://localhost:6379/0") as redis:
    async with cordtrio.open_engine(redis.store, bus, payloads=redis.payloads,
                                    schemas=redis.schemas) as engine:
        ...
```

redis-py's client is asyncio; it runs behind a trio-asyncio bridge opened by ``connect``
(``adapter``), so nothing asyncio shows in the API. The key layout (SPEC §11) and where it
deviates from the original are described in ``cordtrio.backends.redis.store``.
"""

from __future__ import annotations

from .adapter import RedisAdapter
from .connection import CONNECT_TIMEOUT, RedisBackends, connect
from .payloads import RedisPayloadStore
from .redis_errors import RedisDataError, mask_url
from .schemas import RedisSchemaRegistry
from .store import RedisStore

__all__ = [
    "CONNECT_TIMEOUT",
    "RedisAdapter",
    "RedisBackends",
    "RedisDataError",
    "RedisPayloadStore",
    "RedisSchemaRegistry",
    "RedisStore",
    "connect",
    "mask_url",
]
