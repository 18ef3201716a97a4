"""Training stage: the model, the loop, the export, the job, the quality gate and the job launchers.

Importing this package must not import torch: the gate and the launchers run on
installs that have no torch (the artifact, its evaluation and the registry are ``model``'s).
"""
