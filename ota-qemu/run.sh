#!/usr/bin/env bash
# Builds the ota-qemu firmware and runs it on QEMU's mps2-an386 (Cortex-M4F): a whole simulated
# upgrade through ota-core's Agent, checked, with every figure printed (stack, heap, instructions
# per KiB of body). Exits with the firmware's status: non-zero when any check failed.
#
# -icount shift=0,sleep=off makes QEMU's virtual clock advance exactly 1 ns per instruction,
# which is what the firmware's instruction counts read (it refuses to run without it).
# OTA_QEMU_CHUNK=N (build time) feeds the body in N-byte chunks instead of 1460.
set -euo pipefail
cd "$(dirname "$0")"

target=thumbv7em-none-eabihf
target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
if ! command -v qemu-system-arm >/dev/null 2>&1; then
  echo "ota-qemu: qemu-system-arm is not installed (Debian: apt-get install qemu-system-arm)" >&2
  exit 2
fi
cargo build --release --target "$target" --target-dir "$target_dir"
# The timeout only guards against a hung run (a normal one takes about a second).
timeout 300 qemu-system-arm -machine mps2-an386 -cpu cortex-m4 \
  -nographic -monitor none -serial none \
  -semihosting-config enable=on,target=native \
  -icount shift=0,align=off,sleep=off \
  -kernel "$target_dir/$target/release/ota-qemu"
