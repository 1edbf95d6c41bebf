"""What the controller and the worker both import: wire schemas, states, paths, exit codes.

Nothing here may import torch or anything from ``controller`` or ``worker``.
"""
