"""`noetl-runtime bench`: what a durable step costs, next to the floors it is built from.

One module per workload; `run.run_bench` runs them on the configured (or embedded) servers
with the mesh as separate processes, and `model.Document` is the `--json` contract.
"""

from noetl.bench.model import ALL_WORKLOADS, DEFAULT_WORKLOADS, Document, Workload
from noetl.bench.run import run_bench

__all__ = ["ALL_WORKLOADS", "DEFAULT_WORKLOADS", "Document", "Workload", "run_bench"]
