"""Training of the bundled shapes model (``python -m pipelines.training.shapes_training``) and its GPU
script; the model's story is in ``pipelines/shapes_model/README.md``."""
