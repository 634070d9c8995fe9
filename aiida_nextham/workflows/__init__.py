"""AiiDA work chains of aiida-nextham and their protocols."""
