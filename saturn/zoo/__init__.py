"""Models and datasets, all offline: configs with random init, or local weights and files.

Config look-ups (names, overrides, parameter counts) come from the torch-free `configs` module;
the model classes are imported on first use, so validating or planning never imports torch.
"""

from typing import Any

from saturn.zoo.configs import architecture, check_model_name, model_config, model_names, param_count

_LAZY = ("SequentialModel", "build_model")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from saturn.zoo import models

        return getattr(models, name)
    raise AttributeError(f"module 'saturn.zoo' has no attribute {name!r}")


__all__ = ["SequentialModel", "architecture", "build_model", "check_model_name", "model_config",
           "model_names", "param_count"]
