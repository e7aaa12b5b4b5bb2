"""deeprecipe: every architecture family under every supervision regime, with the full recipe."""

__version__ = "0.1.0"
