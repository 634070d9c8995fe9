"""The NextHAM model: orbital irreps, graphs, the equivariant Transformer, losses, training."""
