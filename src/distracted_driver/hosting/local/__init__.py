"""Local hosting: a runtime daemon that emulates SageMaker endpoints with model-server processes.

``LocalHosting`` is imported on first use (PEP 562): the runtime daemon imports
modules of this package too, and a restarted runtime is back sooner without
the image libraries that only the deploying side needs.
"""

__all__ = ["LocalHosting"]


def __getattr__(name: str):
    if name in __all__:
        from distracted_driver.hosting.local import hosting

        return getattr(hosting, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
