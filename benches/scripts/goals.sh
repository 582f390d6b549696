#!/usr/bin/env bash
# Every goal figure of the body path and the footprint, measured in one run on this tree:
# the core chunk path against the bare digest, ota-std end to end against bare md-5 and the
# `curl | tee | md5sum` pipeline, instructions per KiB on the emulated Cortex-M4F, and the
# `.text` of each footprint configuration against its budget. Prints the figures with the load
# average before and after; the whole output of each command goes to $OUT (default
# target/goals). Run it on an idle machine: the timed figures are ratios within one run, but two
# shared cores still move them by a few hundredths.
#
# Usage: benches/scripts/goals.sh            (from anywhere in the repository)
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
out="${OUT:-$root/target/goals}"
mkdir -p "$out"

load() { cut -d' ' -f1-3 /proc/loadavg; }
echo "load average before: $(load)"

echo
echo "== core chunk path / bare digest (cargo bench -p ota-benches --bench chunk_path -- nomatch)"
cargo bench -q -p ota-benches --bench chunk_path -- nomatch >"$out/chunk_path.txt" 2>&1
grep -E "^(Md5|Sha256) " "$out/chunk_path.txt"

echo
echo "== ota-std end to end (OTA_BENCH_MIB=64 OTA_BENCH_ROUNDS=3 cargo bench -p ota-benches --bench e2e)"
OTA_BENCH_MIB=64 OTA_BENCH_ROUNDS=3 cargo bench -q -p ota-benches --bench e2e >"$out/e2e.txt" 2>&1
sed -n '/^best of/,$p' "$out/e2e.txt"

echo
echo "== Cortex-M4F instructions (ota-qemu/run.sh)"
if ota-qemu/run.sh >"$out/qemu.txt" 2>&1; then
  grep -E "^(instructions per KiB|agent / bare MD5)" "$out/qemu.txt"
else
  echo "ota-qemu/run.sh failed or is not runnable here (see $out/qemu.txt)"
  tail -3 "$out/qemu.txt"
fi

echo
echo "== footprint .text (ota-footprint, thumbv7em-none-eabihf) against ota-footprint/size-budget.txt"
(
  cd ota-footprint
  cargo build -q --release --target thumbv7em-none-eabihf
  cargo build -q --release --target thumbv7em-none-eabihf --features tls --bin driver-tls
  cd minimal
  cargo build -q --release --target thumbv7em-none-eabihf --target-dir ../target
) >"$out/footprint.txt" 2>&1 || { echo "footprint build failed (see $out/footprint.txt)"; exit 1; }
ota-footprint/check-size.sh || true

echo
echo "load average after: $(load)"
