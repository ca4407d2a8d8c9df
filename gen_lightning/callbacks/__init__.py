"""Lightning callbacks: sample grids, metrics.json and sample files."""
