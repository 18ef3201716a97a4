"""The model artifact and what runs and scores it: below both training and serving.

``artifact`` (the ``model.tar.gz`` contract), ``precision`` (which precision an artifact
serves), ``inference`` (the ONNX Runtime ``Classifier``), ``evaluate`` (scores on a
channel), ``registry`` (versions and the live pointer in the bucket) and ``cache``
(artifacts fetched from the bucket). No torch here: serving installs import all of it.
"""
