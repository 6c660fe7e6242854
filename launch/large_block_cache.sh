#!/usr/bin/env bash
# Runs a command with launch/large_block_cache.c preloaded (freed blocks of >= LARGE_BLOCK_MIB MiB, default 64,
# kept for reuse instead of munmapped): what XLA:CPU's per-step allocation of its temporaries costs (README,
# "Benchmarks"). Needs a C compiler (cc).   bash launch/large_block_cache.sh ladd-jax bench ladd --steps 7
set -euo pipefail
lib="${TMPDIR:-/tmp}/large_block_cache.$(id -u).so"
cc -O2 -shared -fPIC -o "$lib" "$(dirname "$0")/large_block_cache.c" -lpthread
LD_PRELOAD="$lib${LD_PRELOAD:+:$LD_PRELOAD}" exec "$@"
