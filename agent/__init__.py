"""agent: a readable Python re-implementation of Istio's pilot-agent."""

__version__ = "0.1.0"
