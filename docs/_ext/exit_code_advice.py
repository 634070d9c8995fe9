"""What to do about an exit code: the last column of the tables of ``docs/troubleshooting.md``.

Keys are an exit-code label (advice for every process that has it) or ``'<entry point>:<label>'``
(advice for one process, taking precedence). Values are inline MyST Markdown. A key that matches no
exit code of any ``nextham.*`` process makes the docs build warn (and fail with ``-W``).
"""

ADVICE: dict[str, str] = {
    # ------------------------------------------------------------------------------------- aiida-core
    'ERROR_UNSPECIFIED': 'Read `verdi process report <PK>`; file a bug with the traceback.',
    'ERROR_INVALID_OUTPUT': 'A bug of the plugin (an output of the wrong type): file an issue.',
    'ERROR_MISSING_OUTPUT': 'A bug of the plugin (a required output was not attached): file an issue.',
    'ERROR_NO_RETRIEVED_FOLDER': 'The job folder could not be retrieved: check the computer '
    '(`verdi computer test <COMPUTER>`) and the scheduler output.',
    'ERROR_SCHEDULER_OUT_OF_MEMORY': 'Request more memory (`metadata.options.max_memory_kb`); for '
    'predictions lower `parameters.max_memory_mb` or `edge_chunk`.',
    'ERROR_SCHEDULER_OUT_OF_WALLTIME': 'Raise `metadata.options.max_wallclock_seconds`. Training resumes '
    'by itself inside `NexthamTrainWorkChain` (code 400 of the CalcJob).',
    'ERROR_SCHEDULER_INVALID_ACCOUNT': 'Set `metadata.options.account` to a Slurm account you may charge.',
    'ERROR_SCHEDULER_NODE_FAILURE': 'Resubmit; the restart work chains do it for you where a checkpoint '
    'exists.',
    'ERROR_SUB_PROCESS_EXCEPTED': 'The calculation raised an exception: `verdi process report` of the '
    'child, then `verdi process show`.',
    'ERROR_MAXIMUM_ITERATIONS_EXCEEDED': 'Every restart failed: read the reports of the children; raise '
    '`max_iterations` only if each attempt made progress.',
    'ERROR_UNHANDLED_FAILURE': 'The calculation failed twice with a code no handler knows: see its own '
    'exit code below.',
    # ------------------------------------------------------------------------------------ engine I/O
    'ERROR_OUTPUT_FILES_MISSING': 'The engine died before writing its results (killed, out of memory, '
    'wrong executable): read `nextham.err` in the retrieved folder (`verdi calcjob outputcat <PK> '
    'nextham.err`).',
    'ERROR_ENGINE_FAILED': 'Read `nextham.err`; rerun the command line of `_aiidasubmit.sh` by hand '
    'with `nextham --debug` for the traceback.',
    'ERROR_UNEXPECTED_PARSER_EXCEPTION': 'A bug of the parser: file an issue with the retrieved files.',
    # ----------------------------------------------------------------------------------- DFT labels
    'nextham.dft:ERROR_SCF_NOT_CONVERGED': 'Run it through `NexthamDftBaseWorkChain`, which escalates '
    '(more cycles, damping + level shift, smearing).',
    'nextham.dft.base:ERROR_SCF_NOT_CONVERGED': 'All escalation steps failed: check the structure '
    '(overlapping atoms?), add `smearing` for metals or start from the `stringent` protocol.',
    'nextham.dft:ERROR_SELF_CHECK_FAILED': 'The real-space blocks do not reproduce PySCF’s bands: a '
    'larger `cutoff` or `dense_kmesh` (the base work chain tries both).',
    'nextham.dft.base:ERROR_SELF_CHECK_FAILED': 'Raise `cutoff` further (Gaussian tails are long) or '
    'relax `selfcheck_tolerance` knowingly; see *Label engine* in the benchmarks.',
    'ERROR_UNSUPPORTED_ELEMENT_OR_BASIS': 'Pick a basis PySCF ships for the element (`gth-szv`, '
    '`gth-dzvp`) and a pseudopotential family that has it (`aiida-nextham install gth`).',
    'ERROR_BAD_STRUCTURE': 'Atoms too close or the cell not periodic in 3D: fix the structure (vacuum '
    'for 2D materials, no duplicate sites).',
    'ERROR_INVALID_CONFIG': 'A misspelled or out-of-range key in `parameters`: the message names it.',
    'nextham.dft.base:ERROR_INVALID_CONFIG': 'A misspelled or out-of-range key in `dft.parameters`: '
    'the report of the failed calculation names it.',
    # ------------------------------------------------------------------------------------- training
    'ERROR_WALLTIME_WITH_CHECKPOINT': 'Resume: pass the `checkpoint` output as the `checkpoint` input '
    '(`NexthamTrainWorkChain` does it automatically).',
    'ERROR_INTERRUPTED_WITHOUT_CHECKPOINT': 'Killed before the first checkpoint: lower '
    '`train.checkpoint_every` or raise the walltime.',
    'nextham.train:ERROR_DIVERGED': 'Lower `train.lr` or `grad_clip`; `NexthamTrainWorkChain` resumes '
    'with `lr × nan_lr_factor`.',
    'nextham.train:ERROR_BAD_DATA': 'Labels need H0, H and S with one basis per element: relabel with '
    '`mode` `label`.',
    'ERROR_BAD_CONFIG': 'Unknown keys are errors: compare with `examples/train_si.yaml`.',
    'ERROR_BAD_CHECKPOINT': 'The checkpoint or parent model belongs to another architecture or basis: '
    'start without it.',
    'ERROR_MODEL_MISSING': 'Read `nextham.err` and `status.json` of the retrieved folder.',
    'ERROR_NO_PROGRESS': 'The walltime is shorter than one checkpoint interval: raise it or lower '
    '`train.checkpoint_every`.',
    # ----------------------------------------------------------------------------------- prediction
    'ERROR_MODEL_COVERAGE': 'The model was not trained on this element or basis: train or fine-tune on '
    'labels that contain it.',
    'ERROR_MODEL_INVALID': 'Not a safetensors + JSON model folder of `nextham train`; re-import the model.',
    'ERROR_H0_INVALID': 'The `h0` input has no H0 blocks or describes another cell: use DFT labels or '
    '`nextham dft --mode h0`.',
    'ERROR_H0_FAILED': 'The PySCF build of H0 failed: see `nextham.err`; try the `fast` protocol to '
    'isolate the cause.',
    'ERROR_MISSING_PSEUDOPOTENTIAL': 'The family lacks an element, or its functional differs from the '
    'model’s training labels.',
    'ERROR_INVALID_KPATH': 'seekpath found no path: give `kpath` `{"path": "G-X-..."}` explicitly.',
    'ERROR_PREDICT_FAILED': 'See the exit code of the `NexthamPredictCalculation` in the message.',
    # ----------------------------------------------------------------------------------- validation
    'nextham.validate:ERROR_KPOINTS_MISMATCH': 'The reference bands were computed on another path: '
    'compute both on the same `KpointsData`.',
    'nextham.predict:ERROR_KPOINTS_MISMATCH': 'Build the `kpoints` input with `seekpath_band_path` so '
    'the engine can reproduce it.',
    'ERROR_STRUCTURE_MISMATCH': 'Prediction and reference describe different cells or bases.',
    'ERROR_NO_ALIGNMENT': 'Give the Fermi level or electron count (`predicted_parameters`, '
    '`reference_parameters`).',
    # -------------------------------------------------------------------------------------- datasets
    'ERROR_ALL_FAILED': 'Every label failed: the `summary` output lists the exit codes; fix the first one.',
    # ------------------------------------------------------------------------------------------ ARPES
    'nextham.arpes_fit:ERROR_BAD_DATA': 'Check the data has an `eV` axis and points above `emin`.',
    'ERROR_BAD_MODEL': 'Unknown model name or parameters outside its bounds: see `nextham arpes-fit --help`.',
    'ERROR_FIT_FAILED': 'Non-finite loss: fewer free parameters, an `init` near the answer, or the '
    '`baseline` method.',
}
