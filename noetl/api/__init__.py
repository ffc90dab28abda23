"""The REST API gateway: an aiohttp server over the store and the actors (not an actor)."""

from noetl.api.app import make_app
from noetl.api.server import ApiServer

__all__ = ["ApiServer", "make_app"]
