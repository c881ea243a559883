#!/usr/bin/env bash
# The TweetEval comparison (CPU-sized, manifests/examples/tweeteval-compare/) over seeds, from scratch
# and resumable: run it again after an interruption and it skips finished runs and resumes the rest.
#   TWEETEVAL_DIR=../shared/data/tweeteval benchmarks/compare_tweeteval.sh
# Seeds: 1, 2, 3 for the joint method (also with minSteps 400), uniform, FAMO and UPGrad (SEEDS=...); seed 1 for the other
# methods (set OTHERS= to skip them). PARALLEL runs at once, THREADS CPU threads each (default 2 x 1).
# Results: runs/compare/compare-seeds.{md,csv,png} (`asyncmtl compare --experiment tweeteval-compare`).
set -euo pipefail
cd "$(dirname "$0")/.."
: "${TWEETEVAL_DIR:?set TWEETEVAL_DIR to the TweetEval folder}"
ASYNCMTL=${ASYNCMTL:-asyncmtl}
SEEDS=${SEEDS:-1,2,3}
PARALLEL=${PARALLEL:-2}
THREADS=${THREADS:-1}
d=manifests/examples/tweeteval-compare
main=(joint uniform famo upgrad joint-minsteps)
others=(${OTHERS-bam muppet dwa gradnorm uw sequential-smallest-first sequential-largest-first sequential-easiest-first continual})
specs() { for m in "$@"; do echo "$d/$m.yaml"; done; }
common=(--experiment tweeteval-compare --parallel "$PARALLEL" --threads "$THREADS" --tweeteval-dir "$TWEETEVAL_DIR")
status=0
# the main methods over every seed (seed by seed); then the others at seed 1, with the joint run
# (easiest-first's order) and uniform (BAM's teacher) named again so their references follow the seed
"$ASYNCMTL" sweep $(specs "${main[@]}") --seeds "$SEEDS" "${common[@]}" || status=1
if [ ${#others[@]} -gt 0 ]; then
  "$ASYNCMTL" sweep $(specs joint uniform "${others[@]}") --seeds 1 "${common[@]}" || status=1
fi
"$ASYNCMTL" compare --experiment tweeteval-compare --reference tweeteval-compare-uniform --out runs/compare
exit $status
