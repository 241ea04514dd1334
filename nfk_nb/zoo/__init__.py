"""Small reference models and their training loops, for the tutorials and tests.

One module per family: ``classifier`` (MLPs and a small CNN), ``gan``, ``vae``, ``distill``.
"""
