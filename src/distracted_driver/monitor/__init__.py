"""Monitoring: what the live endpoint sees (data capture), how it drifts from training, and the way back to labels.

Import nothing here: the local runtime imports ``monitor.capture`` to write
captured traffic, and must not load what the drift report needs.
"""
