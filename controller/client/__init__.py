"""pyrecover's public Python API: a typed client for the controller's REST API.

    from controller.client import Client, NotFound

    with Client("http://login1:8000", token="pyr_u_...") as client:
        run = client.submit({"name": "try", "training": {...}, "resources": {...}})
        final = client.wait(run.id)

See ``controller.client.client.Client`` for the calls (the same as the CLI's) and
``controller.client.errors`` for the exceptions. Nothing here imports torch.
"""

from controller.client.client import Client
from controller.client.config import Connection, load_config, resolve, save_config
from controller.client.errors import (
    ApiError,
    AuthenticationError,
    Conflict,
    ConnectionFailed,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    PyrecoverError,
    RateLimited,
    Unavailable,
)
from controller.client.runfile import load_run_file

__all__ = [
    "ApiError",
    "AuthenticationError",
    "Client",
    "Conflict",
    "Connection",
    "ConnectionFailed",
    "InvalidRequest",
    "NotFound",
    "PermissionDenied",
    "PyrecoverError",
    "RateLimited",
    "Unavailable",
    "load_config",
    "load_run_file",
    "resolve",
    "save_config",
]
