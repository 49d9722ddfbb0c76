"""Saturn: jointly select parallelism, allocate GPUs and schedule many training jobs (SPASE)."""

from saturn.errors import SaturnError
from saturn.spec import Cluster, Job, Node, Workload, load_workload

__version__ = "0.1.0"
__all__ = ["Cluster", "Job", "Node", "SaturnError", "Workload", "load_workload", "__version__"]
