"""AiiDA parsers of aiida-nextham (one per ``nextham`` sub-command run by a CalcJob)."""
