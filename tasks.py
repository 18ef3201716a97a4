"""invoke tasks: parse options, call the library. No logic lives here.

Every task takes ``--backend local|aws`` where it touches the bucket or the
endpoint (default ``local``; ``DD_BACKEND`` overrides).
"""

from __future__ import annotations

from invoke import Collection, task

from distracted_driver.config import Settings


def _settings(backend: str | None = None) -> Settings:
    return Settings.from_env(backend=backend)


# --- data -------------------------------------------------------------------

data = Collection("data")

# --- top level --------------------------------------------------------------


@task
def demo(c):
    """Run the main job end to end on generated sample data and leave the stack up."""
    from distracted_driver import demo as demo_job

    demo_job.run(_settings())


@task
def down(c):
    """Stop every local server the demo started."""
    from distracted_driver import demo as demo_job

    demo_job.down(_settings())


ns = Collection(demo, down, data)
