"""The test project, for an ASGI server (uvicorn, in tests/servers.py).

As tests/wsgi.py: the URLconf is loaded with the application, and the
process says so on stderr once it is ready.
"""

import os
import sys

from django.core.asgi import get_asgi_application
from django.urls import get_resolver

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

application = get_asgi_application()
get_resolver().url_patterns  # noqa: B018 (imports the URLconf and its views)

print(f"tests.asgi ready pid={os.getpid()}", file=sys.stderr, flush=True)
