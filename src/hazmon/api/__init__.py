"""The HTTP API (FastAPI). ``create_app(settings)`` builds an app whose runtime starts in its lifespan."""

from hazmon.api.app import create_app

__all__ = ["create_app"]
