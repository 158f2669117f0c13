"""The test project, for gunicorn (tests/servers.py).

Settings come from ``DJANGO_SETTINGS_MODULE`` (``tests.settings`` unless
set). The URLconf is loaded here, with the application, rather than by the
first request as Django would: loading it takes a few hundred milliseconds,
which would hold every first request at the same point and so decide when
each reaches the package, whatever the test intends. Once loaded, the worker
says so on stderr, naming the Redis modules it had imported by then; the
tests wait for that line before they send their first requests.
"""

import os
import sys

from django.core.wsgi import get_wsgi_application
from django.urls import get_resolver

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

application = get_wsgi_application()
get_resolver().url_patterns  # noqa: B018 (imports the URLconf and its views)

_REDIS_MODULES = (
    "redis",
    "redis.connection",
    "redis.exceptions",
    "django_redis",
    "django_redis.cache",
)
_loaded = [name for name in _REDIS_MODULES if name in sys.modules]
print(
    f"tests.wsgi ready pid={os.getpid()} redis-modules={','.join(_loaded) or '-'}",
    file=sys.stderr,
    flush=True,
)
