"""staterank: per-head recurrent-state rank dynamics of linear-attention LLMs."""

__version__ = "0.1.0"
