#!/usr/bin/env bash
# Import a real DeepH Hamiltonian (MoTe2 monolayer) as a provenance-tracked node, compute its band
# structure with a calcfunction and plot it (the quickstart of the block-Hamiltonian layer).
#   bash examples/import_deeph.sh          (inside the venv; needs ../shared/realdata)
# Environment: NEXTHAM_PROFILE (default nextham), NEXTHAM_REALDATA, NEXTHAM_OUT (default ./quickstart-output).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
profile=${NEXTHAM_PROFILE:-nextham}
realdata=${NEXTHAM_REALDATA:-$here/../../shared/realdata}
source_folder=$realdata/deeph_new_MoTe2_bands_deephdock/tests/compute/eigen/eigen.bak/MoTe2
out=${NEXTHAM_OUT:-$PWD/quickstart-output}
mkdir -p "$out"

# embedded profile (SQLite storage, aiida-core's bundled ZeroMQ broker), the local computer, the
# nextham code and the GTH pseudopotential family; reused when it already exists
aiida-nextham setup --profile "$profile"

imported=$(verdi -p "$profile" data nextham import "$source_folder" --label MoTe2-quickstart)
echo "$imported"
pk=$(echo "$imported" | sed -nE 's/.*HamiltonianData<([0-9]+)>.*/\1/p')
verdi -p "$profile" data nextham show "$pk"
verdi -p "$profile" data nextham bands "$pk" --npoints 150 -o "$out/MoTe2_bands.png"
echo "Band structure plot: $out/MoTe2_bands.png"
