#!/usr/bin/env bash
# Build the C++ data-pipeline test driver under AddressSanitizer + UndefinedBehaviorSanitizer and run it.
# Exits non-zero on a failed check or any sanitizer report. Used by `make asan`; outputs in csrc/tests/build/.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
csrc="$(dirname "$here")"
build="$here/build"
mkdir -p "$build"
CXX="${CXX:-g++}"

# The core translation units only: py_data.cpp and bindings.cpp are the pybind11 glue.
"$CXX" -std=c++17 -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all \
  -Wall -Wextra -Werror -pthread -I"$csrc" \
  "$here/test_data.cpp" "$csrc/masking.cpp" "$csrc/collate.cpp" "$csrc/nsp.cpp" \
  -o "$build/test_data_asan"

ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1" \
UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1" \
  "$build/test_data_asan"
