"""`client` and `mesh` fixtures on the module's own mesh (see `module_mesh` in conftest).

Not a conftest: only a module that imports them shares one mesh among its tests; every
other module keeps a fresh mesh per test.
"""

from __future__ import annotations

import pytest

from actors.mesh import Mesh
from noetl.client import Client


@pytest.fixture(name="client")
def shared_client(module_client: Client) -> Client:
    """`client`, on the module's services."""
    return module_client


@pytest.fixture(name="mesh")
def shared_mesh(module_mesh: Mesh) -> Mesh:
    """`mesh`, the module's own."""
    return module_mesh
