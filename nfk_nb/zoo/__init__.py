"""Small reference models and their training loops, for the tutorials and tests.

One module per family: ``classifier`` (MLPs), ``gan`` and ``vae`` (MLPs for 8×8 digits), ``conv`` (their
convolutional versions for larger images), ``distill``; ``_loop`` holds the training loops they share.
"""
