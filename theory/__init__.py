"""Numerical checks of the convergence theory behind Partial Model Collapse
(paper Sec. 4; docs/method.md §4). Stands alone: imports nothing from pmc_min.

- lottery.py: the self-consuming lottery (model collapse) and the
  retain-anchored lottery (partial collapse).
- curated.py: the curated self-consumption update that PMC performs on
  each forget question.
- claims.py: every claim as one check; `python -m theory` prints the table.
"""
