"""prefopt.data: dataset adapters for pairwise and K-wise preference data."""
