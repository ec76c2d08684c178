"""The operator HTTP API: charge points, transactions, and calls Levity sends to chargers
(docs/operator-api.md). Served by uvicorn inside Levity's own event loop."""

from __future__ import annotations


async def serve_api(settings, backend, tokens, schemas):
    """Start the API listener of LEVITY_API_HOST:LEVITY_API_PORT; StartupError when it cannot bind."""
    from levity.api.app import create_app
    from levity.api.listener import ApiListener
    from levity.config import StartupError

    if settings.api_port == settings.port:
        raise StartupError(f"LEVITY_API_PORT ({settings.api_port}) is the chargers' port LEVITY_PORT: the operator "
                           "API needs a port of its own (default 9001; 0 turns it off)")
    listener = ApiListener(create_app(backend, tokens, schemas, settings.max_frame_bytes),
                           settings.api_host, settings.api_port)
    try:
        await listener.start()
    except OSError as exc:
        raise StartupError(f"cannot listen on {settings.api_host}:{settings.api_port} for the operator API "
                           f"(LEVITY_API_HOST / LEVITY_API_PORT, 0 turns it off): {exc.strerror or exc}") from None
    return listener
