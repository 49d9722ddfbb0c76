"""Models and datasets, all offline: configs with random init, or local weights and files."""

from saturn.zoo.models import (
    SequentialModel,
    architecture,
    build_model,
    check_model_name,
    model_config,
    model_names,
    param_count,
)

__all__ = ["SequentialModel", "architecture", "build_model", "check_model_name", "model_config",
           "model_names", "param_count"]
