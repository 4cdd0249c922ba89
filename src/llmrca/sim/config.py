"""The simulator's configuration: the one deployment model, ``llmrca.deploy.config.DeployConfig``.

``SimConfig`` is that class under the name the simulator has always used (the same class, not a copy), so
``SimConfig(...)`` and ``DeployConfig(...)`` are interchangeable. Defaults are the reference study's deployment.
"""

from __future__ import annotations

from llmrca.deploy.config import ARRIVALS, MESH_QUANTILES, NOISE_LEVELS, ROUTING, ConfigError, DeployConfig

SimConfig = DeployConfig

__all__ = ["ARRIVALS", "MESH_QUANTILES", "NOISE_LEVELS", "ROUTING", "ConfigError", "SimConfig"]
