#!/usr/bin/env bash
# Run the test binaries that reach txheap's unsafe code (mapping, staging, syscalls) under
# valgrind memcheck; any memcheck error fails the run (exit 99).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v valgrind >/dev/null 2>&1; then
  echo "valgrind not found: installing it (Debian package)"
  (apt-get update -qq && apt-get install -y -qq valgrind) >/dev/null
fi
# The release test binaries of the README's test command: CI has just built them, so this
# compiles nothing, and memcheck runs optimised code about seven times faster than a dev build
# (measured on the CI machine: 133 s against 893 s for the same tests). These are the binaries
# the suite itself runs, sabotage features included.
cargo test --workspace --release --all-features --no-run --message-format=json 2>/dev/null \
  | grep -o '"executable":"[^"]*"' | cut -d'"' -f4 > /tmp/txheap-test-bins.txt
status=0
# The collections' model test runs 4 random cases here (48 in the normal suite).
export COLLECTIONS_CASES=4
# The readers-and-writers stress tests run 10 s each here (3 s in the normal suite: valgrind is
# slower, and they assert that enough commits and reads happened).
export TXHEAP_STRESS_SECS=10
# Valgrind runs one thread at a time: tests that measure how threads overlap (group commit's
# barriers per commit) skip that figure and keep their correctness checks.
export TXHEAP_VALGRIND=1
for bin in $(grep -E '/deps/(txheap|api|bad_input|alloc_prop|hardening|defects|stored|collections|concurrency|group_commit|capacity|backup|compact|live|reachability|in_place_none|private_pages|realloc)-' /tmp/txheap-test-bins.txt); do
  echo "== valgrind $(basename "$bin")"
  # --fair-sched: reader threads that never make a syscall otherwise starve the writer under
  # valgrind's big lock (the readers-beside-writer test then takes minutes instead of seconds).
  if ! valgrind --error-exitcode=99 --leak-check=no --fair-sched=yes -q "$bin" --test-threads=1 -q; then
    echo "memcheck FAILED for $bin"
    status=1
  fi
done
exit $status
