#!/usr/bin/env bash
# Runs the TweetEval comparison specs (CPU-sized) one after another, then `asyncmtl compare`.
#   benchmarks/compare_tweeteval.sh [METHOD...]     (default: all; TWEETEVAL_DIR must point at the data)
# The joint run goes first (easiest-first takes its order from it), uniform before bam (its teacher).
# Results: runs/compare/.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${TWEETEVAL_DIR:?set TWEETEVAL_DIR to the TweetEval folder}"
ASYNCMTL=${ASYNCMTL:-asyncmtl}
methods=("$@")
if [ ${#methods[@]} -eq 0 ]; then
  methods=(joint uniform bam muppet dwa gradnorm sequential-smallest-first sequential-largest-first sequential-easiest-first continual)
fi
names=()
for m in "${methods[@]}"; do
  spec=manifests/examples/tweeteval-compare/$m.yaml
  [ -f "$spec" ] || { echo "no such method: $m" >&2; exit 2; }
  echo "=== $m" >&2
  "$ASYNCMTL" run "$spec" --no-live --tweeteval-dir "$TWEETEVAL_DIR"
  names+=("tweeteval-compare-$m")
done
ref=()
for n in "${names[@]}"; do [ "$n" = tweeteval-compare-uniform ] && ref=(--reference tweeteval-compare-uniform); done
"$ASYNCMTL" compare "${names[@]}" "${ref[@]}" --out runs/compare
