"""The pyrecover worker: the DDP training process. Must never import ``controller``."""
