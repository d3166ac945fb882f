"""The "context" domain: one story's decisions, subtasks and their dependencies."""
