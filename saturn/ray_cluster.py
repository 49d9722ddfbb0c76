"""Moved to `saturn.executor.ray_cluster` (cluster discovery belongs to execution); this alias
keeps old imports working."""

from saturn.executor.ray_cluster import *  # noqa: F401,F403
from saturn.executor.ray_cluster import __all__  # noqa: F401
