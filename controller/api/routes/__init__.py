"""Routers of the REST API (``/api/v1``): runs, worker reports, operations."""
