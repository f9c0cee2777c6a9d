"""Results on disk (trials.parquet, epochs.parquet, best.json) and the leaderboard report."""
