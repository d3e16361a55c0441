"""The store on Redis (standalone, Sentinel or Cluster): ``store`` (RedisStore, the Store contract of
base.py), ``feed`` (the revocation channel), ``scripts`` (the Lua steps), ``client`` (a redis-py client
for a URL) and ``url`` (parsing redis://, rediss://, redis+sentinel:// and redis+cluster:// URLs).

The only place in the gateway that imports redis-py (tests/unit/test_layout.py checks it); it may
import the store's base (``..base``) and the error tree, nothing above them. Nothing here is imported
until a Redis URL is opened (``gateway.store.open_store``), except ``url``, which needs no redis-py.
"""
