"""The ``nextham`` command line engine that CalcJobs run on any computer (local, SSH, Slurm+GPU).

This package never imports aiida: it reads and writes files only.
"""
