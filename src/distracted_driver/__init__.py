"""Continuous training and deployment of a distracted-driver image classifier."""

__version__ = "0.1.0"
