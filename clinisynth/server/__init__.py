"""The web app: an HTTP API over the Python API (plan, generate, traces, reviews) and the pages under ``web/``.

``create_app`` builds it; ``clinisynth serve`` runs it with uvicorn.
"""

from clinisynth.server.app import create_app

__all__ = ["create_app"]
