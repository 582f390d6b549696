#!/usr/bin/env bash
# The size gate: compares the `.text` of each built footprint binary with its budget in
# size-budget.txt and fails when one is more than 2 % over. Run after building the binaries
# (`cargo build --release --target thumbv7em-none-eabihf`, plus `--features tls --bin
# driver-tls`); a binary that was not built is an error, so that the gate cannot pass by
# accident. Usage: check-size.sh [BUDGET_FILE] (default: size-budget.txt beside this script).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
budget_file="${1:-$here/size-budget.txt}"
bin_dir="${CARGO_TARGET_DIR:-$here/target}/thumbv7em-none-eabihf/release"
size_tool=""
for tool in llvm-size arm-none-eabi-size; do
  if command -v "$tool" >/dev/null 2>&1; then size_tool="$tool"; break; fi
done
if [ -z "$size_tool" ]; then
  echo "check-size: neither llvm-size nor arm-none-eabi-size is installed" >&2
  exit 2
fi
status=0
printf '%-12s %10s %10s %8s\n' binary .text budget growth
while read -r name budget; do
  case "$name" in ''|'#'*) continue ;; esac
  binary="$bin_dir/$name"
  if [ ! -f "$binary" ]; then
    echo "check-size: $binary was not built" >&2
    status=1
    continue
  fi
  text=$("$size_tool" -A "$binary" | awk '$1 == ".text" { print $2 }')
  # Over budget by more than 2 %: text * 100 > budget * 102, in integers.
  growth=$(awk -v t="$text" -v b="$budget" 'BEGIN { printf "%+.2f%%", (t - b) * 100 / b }')
  verdict=ok
  if [ $((text * 100)) -gt $((budget * 102)) ]; then
    verdict="OVER BUDGET (more than 2 %)"
    status=1
  fi
  printf '%-12s %10d %10d %8s %s\n' "$name" "$text" "$budget" "$growth" "$verdict"
done < "$budget_file"
exit "$status"
