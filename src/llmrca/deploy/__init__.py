"""The one deployment model the simulator (``llmrca.sim``) and the live testbed (``llmrca.testbed``) build on:
``DeployConfig`` (what runs, how it is observed, the load, the noise, the timing)."""

from llmrca.deploy.config import ConfigError, DeployConfig

__all__ = ["ConfigError", "DeployConfig"]
