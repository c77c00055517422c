"""Experiments that run models: multi-CoT scaling curves (paper Figure 3) and CoT analyses (Table 3,
App. B.4). ``tract_eval.reports`` only reads stored runs; everything here loads a judge."""
