"""Lab: scaling runs over worker counts and the lecture's cost model."""
