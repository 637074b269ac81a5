"""Switchboard: a self-hosted gateway between chat channels and language models."""

__version__ = "0.1.0"
