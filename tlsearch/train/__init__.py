"""The per-worker training loop, its metrics, and the session seam to Ray Tune / Ray Train."""
