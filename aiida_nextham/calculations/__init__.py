"""AiiDA calculations of aiida-nextham: calcfunctions and CalcJobs."""
