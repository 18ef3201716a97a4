"""Monitoring: what the live endpoint saw (reading data capture), how it drifts from training, and the way back to labels.

The capture format and its writer are the serving side's (``serve.capture``): the local
runtime writes with them and must not load what the monitoring reports need.
"""
