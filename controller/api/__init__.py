"""The REST API: ``create_app(settings)`` builds the FastAPI application."""

from controller.api.app import API_PREFIX, create_app

__all__ = ["API_PREFIX", "create_app"]
