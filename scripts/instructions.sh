#!/usr/bin/env bash
# Instructions per operation of the benches' own children, counted by callgrind (repeatable
# where times are not) inside `Heap::transaction` only (not the child's timing calls, its
# check walk or the close), as the marginal count between two sizes, so that the warm-up
# transaction and set-up cancel out. Prints instructions per `tx.alloc` of a 64-byte node in one transaction (W3, `Full` and
# `None`) and per `None` commit of one such node (W2).
#
#   bash scripts/instructions.sh            # W3 at 100,000 and 200,000; W2 at 20,000 and 40,000
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v valgrind >/dev/null 2>&1; then
  echo "valgrind not found: installing it (Debian package)"
  (apt-get update -qq && apt-get install -y -qq valgrind) >/dev/null
fi
cargo build --release -q -p txheap-benches
bench=${CARGO_TARGET_DIR:-target}/release/txheap-bench
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Total instructions of one child run: engine, workload, operations.
count() {
  rm -rf "$work/d" && mkdir -p "$work/d"
  valgrind --tool=callgrind --callgrind-out-file="$work/cg.out" \
    --toggle-collect='txheap::heap::Heap::transaction_with*' \
    "$bench" --child "$1" "$2" --ops "$3" --dir "$work/d" 2>&1 >/dev/null \
    | sed -n 's/.*Collected : *\([0-9]*\).*/\1/p'
}

marginal() { # engine workload small large what
  local a b
  a=$(count "$1" "$2" "$3")
  b=$(count "$1" "$2" "$4")
  echo "$5: $(( (b - a) / ($4 - $3) )) instructions ($1 $2, marginal between $3 and $4)"
}

marginal txheap W3 100000 200000 "per tx.alloc, Durability::Full"
marginal txheap-none W3 100000 200000 "per tx.alloc, Durability::None"
marginal txheap W2 20000 40000 "per Durability::None commit"
