#!/usr/bin/env bash
# The per-SIMD-level objects (<family>_avx2.cc, <family>_avx512.cc) are compiled with -mavx2 or
# -mavx512f. Any weak (W/V) or unique (u) symbol they define outside their own per-level
# namespaces could be picked by the linker for code running on an older CPU (a
# one-definition-rule hazard that turns into SIGILL). Fails if one appears.
#   tools/check_simd_symbols.sh [build dir, default build/dev]
set -euo pipefail
build="${1:-build/dev}"
objs=$(find "$build" -name '*_avx2.cc.o' -o -name '*_avx512.cc.o' | sort)
[ -n "$objs" ] || { echo "check_simd_symbols: no per-level objects under $build"; exit 1; }
bad=0
for o in $objs; do
  leaks=$(nm -C "$o" | awk '$2 ~ /^[WVu]$/' | grep -v -E 'sf_eigen_(avx2|avx512)|DW\.ref\.__gxx_personality_v0' || true)
  if [ -n "$leaks" ]; then
    echo "error: $o defines shared weak symbols outside its level's namespace:"
    echo "$leaks" | head -20
    bad=1
  fi
done
[ $bad -eq 0 ] && echo "check_simd_symbols: $(echo "$objs" | wc -l) per-level objects clean"
exit $bad
