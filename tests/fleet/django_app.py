"""A tiny Django project in one module, for the gunicorn fleet test of the Django backend.

    gunicorn -c deploy/gunicorn.conf.py tests.fleet.django_app:application

Settings are configured in code: the cache is ``fleetcache.django.FleetCacheBackend`` with
an empty ``LOCATION`` (so ``FLEETCACHE_REDIS_URL`` is read when a worker first connects,
embedded server included) and the namespace ``FLEETCACHE_NAMESPACE``. Every answer is JSON
with the worker's ``pid``; reads report whether this worker's L1 held the key before and
after (``fleetcache.testing.l1_entry``: looking counts no hit and connects nothing), and the
id of the FleetCache behind the thread's backend object (Django builds one per thread).
"""

from __future__ import annotations

import os
import time
from typing import Any

from django.conf import settings

settings.configure(
    DEBUG=False,
    SECRET_KEY="fleetcache-fleet-test-django-secret",
    ALLOWED_HOSTS=["127.0.0.1", "localhost"],
    ROOT_URLCONF=__name__,
    INSTALLED_APPS=[],
    MIDDLEWARE=[],
    USE_TZ=True,
    CACHES={
        "default": {
            "BACKEND": "fleetcache.django.FleetCacheBackend",
            "LOCATION": "",
            "KEY_PREFIX": "app",
            "OPTIONS": {"namespace": os.environ.get("FLEETCACHE_NAMESPACE", "django")},
        }
    },
)

from django.core.cache import cache  # noqa: E402 - settings first
from django.core.wsgi import get_wsgi_application  # noqa: E402
from django.http import HttpRequest, JsonResponse  # noqa: E402
from django.urls import path  # noqa: E402
from django.views.decorators.csrf import csrf_exempt  # noqa: E402

from fleetcache.testing import l1_entry  # noqa: E402


def _answer(**body: Any) -> JsonResponse:
    return JsonResponse({"pid": os.getpid(), "cache_id": id(cache.cache), **body})


def _in_l1(key: str) -> bool:
    return l1_entry(cache.cache, cache.make_key(key)) is not None


def health(request: HttpRequest) -> JsonResponse:
    connected = cache.cache.connect(wait=2.0)
    return _answer(ok=connected and cache.cache.health().redis_ok)


@csrf_exempt
def item(request: HttpRequest, key: str) -> JsonResponse:
    """GET: read (through L1); POST: store ``(value, writer pid)``, a tuple, so pickled and
    signed; DELETE-by-POST at /delete/<key>."""
    if request.method == "POST":
        cache.set(key, (request.GET["value"], os.getpid()), 300)
        return _answer(stored=True)
    before = _in_l1(key)
    value = cache.get(key)
    return _answer(value=None if value is None else list(value), in_l1_before=before,
                   in_l1_after=_in_l1(key))


@csrf_exempt
def delete(request: HttpRequest, key: str) -> JsonResponse:
    return _answer(existed=cache.delete(key))


def peek(request: HttpRequest, key: str) -> JsonResponse:
    """Whether this worker's L1 holds ``key`` now, without reading it."""
    return _answer(in_l1=_in_l1(key))


def burst(request: HttpRequest, key: str) -> JsonResponse:
    delay = int(request.GET.get("ms", "300")) / 1000
    computed: list[bool] = []

    def compute() -> dict[str, Any]:
        computed.append(True)
        time.sleep(delay)
        return {"key": key, "computed_by": os.getpid()}

    value = cache.get_or_set(f"burst:{key}", compute, 60)
    return _answer(value=value, computed=bool(computed))


def stats(request: HttpRequest) -> JsonResponse:
    s = cache.cache.stats()
    return _answer(**{name: getattr(s, name) for name in s.__dataclass_fields__})


urlpatterns = [
    path("health", health),
    path("item/<str:key>", item),
    path("delete/<str:key>", delete),
    path("peek/<str:key>", peek),
    path("burst/<str:key>", burst),
    path("stats", stats),
]

application = get_wsgi_application()
