"""llmrca: test root cause analysis methods on GPU-driven LLM inference deployments."""

__version__ = "0.1.0"
