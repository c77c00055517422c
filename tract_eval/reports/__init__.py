"""Reports from stored runs: paper-style tables, bootstrap confidence intervals, paired comparisons,
multi-CoT scaling curves and CoT analyses. Heavy libraries load inside the functions that need them."""
