"""DAG files. A package only so that lint-imports can check what they import."""
