#!/usr/bin/env bash
# Quickstart (run by ./dev quickstart, inside the venv): `aiida-nextham quickstart` sets up or reuses
# the embedded profile, runs the DFT label of silicon (NexthamDftBaseWorkChain, PySCF) and writes
# quickstart-output/si_bands_h_vs_h0.png, the band structures of the self-consistent H and of H0;
# then builds a small Si dataset, trains a small model on CPU, predicts a held-out cell and a supercell,
# validates them against DFT (quickstart-output/*_validation.png) and prints metrics and provenance.
#   bash examples/quickstart.sh [--protocol balanced] [--skip-ml] [other aiida-nextham quickstart options]
# Environment: NEXTHAM_PROFILE (default nextham), NEXTHAM_OUT (default ./quickstart-output).
# The DeepH import example that used to be the quickstart is examples/import_deeph.sh.
set -euo pipefail
profile=${NEXTHAM_PROFILE:-nextham}
out=${NEXTHAM_OUT:-$PWD/quickstart-output}
exec aiida-nextham quickstart --profile "$profile" --output-dir "$out" "$@"
