"""Training stage: model, loop, evaluation, export, artifact, registry.

Importing this package must not import torch: the artifact reader and the
registry are used by serving installs that have no torch.
"""
