"""Hodei: a self-hosted function runner on a HashiCorp fleet."""

__version__ = "0.1.0"
