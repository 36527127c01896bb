"""The HTTP API (FastAPI) and operator console; talks to the runtime and nothing below it directly for state.
May import anything but hazmon.commands. ``create_app(settings)`` builds an app whose runtime starts in its lifespan."""

from hazmon.api.app import create_app

__all__ = ["create_app"]
