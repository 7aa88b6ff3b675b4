"""Data sources, preparation into snapshots, and Great Expectations validation."""
