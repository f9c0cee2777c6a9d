"""tlsearch: distributed hyperparameter search for transfer learning on Ray."""

__version__ = "0.2.0"
