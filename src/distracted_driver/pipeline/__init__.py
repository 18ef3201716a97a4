"""The pipeline: every stage in order, each skipped when its inputs are unchanged, and the loop that reruns it."""
