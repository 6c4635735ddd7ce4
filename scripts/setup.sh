# Sourced by the scripts beside it: installs the package with its test extras and points ir_datasets at a
# writable copy of the offline datasets in ../shared/ir_datasets (when that folder exists).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PIP_DISABLE_PIP_VERSION_CHECK=1 TOKENIZERS_PARALLELISM=false

# torch first and pinned to the CPU wheel; the package itself only asks for torch>=2.1, so GPU users keep
# their own build. Skip when a suitable torch is already importable.
if ! python -c 'import torch' 2>/dev/null; then
    python -m pip install --quiet torch==2.13.0
fi
python -m pip install --quiet -e '.[dev]'

# ir_datasets writes caches beside its files, so it gets a writable copy of the read-only shared folder.
shared="$repo/../shared/ir_datasets"
if [ -z "${IR_DATASETS_HOME:-}" ] && [ -d "$shared" ]; then
    export IR_DATASETS_HOME="${PGRANK_DATA_HOME:-$HOME/.cache/pyterrier-pgrank/ir_datasets}"
    mkdir -p "$IR_DATASETS_HOME"
    cp -rn "$shared/." "$IR_DATASETS_HOME/" 2>/dev/null || true
    chmod -R u+w "$IR_DATASETS_HOME"
fi
