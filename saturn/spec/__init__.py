"""Stage 1 of spec -> profiles -> plan -> execution: the workload a user describes."""

from saturn.spec.load import build_workload, check_local_paths, dump_workload, load_workload
from saturn.spec.schema import Cluster, DataSpec, Job, ModelSpec, Node, OptimizerSpec, RaySpec, Workload
from saturn.spec.signature import profile_signature

__all__ = ["Cluster", "DataSpec", "Job", "ModelSpec", "Node", "OptimizerSpec", "RaySpec",
           "Workload", "build_workload", "check_local_paths", "dump_workload", "load_workload", "profile_signature"]
