"""flowdiff: NNstat-style flow statistics differ."""

__version__ = "0.1.0"
