#!/usr/bin/env bash
# The AI-routing demo: two backends, a local OpenAI-compatible provider and the gateway on :5900.
# Run from the repository root: examples/ai-routing/run.sh   (Ctrl-C stops everything)
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT INT TERM
$PY examples/ai-routing/backend.py --port 9201 --name catalogue & pids+=($!)
$PY examples/ai-routing/backend.py --port 9202 --name billing & pids+=($!)
# The fake provider answers {"index": 1} when the request mentions refunds, invoices or payments.
$PY -m tests.servers.fake_llm --port 9400 --rule refund=1 --rule invoice=1 --rule payment=1 --default-index 0 &
pids+=($!)
KAIROS_CONFIG_PATH=examples/ai-routing/config.json KAIROS_PORT=${KAIROS_PORT:-5900} $PY -m kairos run &
pids+=($!)
wait
