"""Local hosting: a runtime daemon that emulates SageMaker endpoints with model-server processes."""

from distracted_driver.hosting.local.hosting import HostingError, LocalHosting

__all__ = ["HostingError", "LocalHosting"]
