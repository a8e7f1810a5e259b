"""What policies achieve: cost, SLO, drops and churn against HPA, the oracle and tuned rules; quality
tables with no speed anchor (seeded, so the same command gives the same table)."""
