"""`importer serve`: an HTTP front door that spools posted manifests durably and imports them with
the same pipeline as `importer import`; `importer submit`: its client.

Needs the `service` extra (FastAPI, uvicorn, python-multipart) for `serve`; `submit` needs only
httpx. Nothing here is imported by the rest of the package.
"""
