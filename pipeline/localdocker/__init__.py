"""A Docker engine and the project's images where Docker Hub is out of reach (tests, benches, local compose)."""
