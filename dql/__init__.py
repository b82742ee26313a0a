"""dql: an offline reinforcement-learning suite centred on Diffusion-QL."""

__version__ = "0.1.0"
