"""Reports from stored runs (no model is loaded): paper-style tables, bootstrap confidence intervals,
paired comparisons and the λ sweep. Heavy libraries load inside the functions that need them."""
