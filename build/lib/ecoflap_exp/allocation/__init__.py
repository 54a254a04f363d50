"""Scores -> per-group sparsity: pure functions of the scores (or weight-metric sketches), the
groups' sizes, the target sparsity and the per-group ceiling (`allocation/` config group)."""
