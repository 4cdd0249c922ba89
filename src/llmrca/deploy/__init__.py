"""The deployment model that the simulator (``llmrca.sim``) and the live testbed (``llmrca.testbed``) both build on."""
