"""``ka2er serve`` and its client: the model on a shared (GPU) machine, Slicer on the laptops.

:mod:`.client` (``RemoteSession``) needs only the standard library and numpy; the server
(:mod:`.app`, FastAPI and uvicorn) needs the ``server`` extra.
"""
