"""The model layer: refs and aliases, providers, failover, final-text extraction."""
