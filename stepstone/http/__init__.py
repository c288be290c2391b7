"""The HTTP API (`stepstone serve`): Cloudflare's Workflows REST API in shape, JSON in and out; the dashboard.

`create_app(engine)` gives the ASGI app; `server.run(...)` serves it with uvicorn.
Nothing here is imported by `import stepstone`: Starlette and uvicorn load only when
the API is used.

    module        concept
    app.py        create_app: routes, access control, errors as JSON
    routes.py     the endpoints
    openapi.py    the OpenAPI document, as data
    responses.py  the JSON envelope and the stable error codes
    inputs.py     request bodies and query parameters, checked
    auth.py       the bearer token, loopback addresses
    stream.py     live changes as Server-Sent Events
    server.py     uvicorn, signals and graceful shutdown
    dashboard/    the browser page at `/`, and its files
"""

from stepstone.http.app import create_app

__all__ = ["create_app"]
