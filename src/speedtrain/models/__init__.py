"""Model builders: the compact student (and, later, the teacher)."""
