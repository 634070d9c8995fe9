"""ARPES: data model and readers, differentiable tight-binding models, the forward simulator, fitting.

Submodules are imported explicitly (``from aiida_nextham.arpes import tightbinding``) so that reading
data does not pull in torch.
"""
