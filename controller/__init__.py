"""The pyrecover controller: stores runs, submits attempts, resubmits them until the run is done.

Must not import torch at module level: it runs on login/service nodes without GPUs.
"""
