"""The HTTP API as a user's own ASGI app (`uvicorn tests.http_api.embedded:api`), over the tests' app's engine."""

from __future__ import annotations

from stepstone.http import create_app

from .app import engine

api = create_app(engine)
