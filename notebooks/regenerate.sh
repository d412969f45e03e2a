#!/usr/bin/env bash
# Re-run notebooks in place so their stored outputs match the library (nbval compares them).
# Usage: notebooks/regenerate.sh [notebooks/NN_name.ipynb ...]   (default: all of them)
# Run it in the environment CI uses; outputs are byte-stable on the same machine kind.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONWARNINGS=ignore OMP_NUM_THREADS=1 MPLBACKEND=module://matplotlib_inline.backend_inline
files=("$@"); [ ${#files[@]} -gt 0 ] || files=(notebooks/[0-9]*.ipynb)
jupyter nbconvert --to notebook --execute --inplace \
  --ExecutePreprocessor.timeout=600 --ExecutePreprocessor.record_timing=False \
  --ExecutePreprocessor.store_widget_state=False \
  --ExecutePreprocessor.extra_arguments="['--IPKernelApp.capture_fd_output=False']" "${files[@]}"
