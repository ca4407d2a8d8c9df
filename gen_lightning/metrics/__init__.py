"""Metrics that need only a model's sample()/log_prob() and the real data."""
