#!/usr/bin/env bash
# Where the instructions of the download go: a call-tree profile of every call into the agent
# during the download phase of the ota-qemu run (one tree per kind of call: body_buffer,
# body_filled, storage answers with the read-back, poll_action, deadlines...), counted from a
# trace of every instruction QEMU executes (profile.py says how). Argument: the least count a
# line needs to be printed (default 300).
#
# Built apart (target/profile: debug info for the symbols, and OTA_QEMU_NO_PAINT so that the
# stack painting around every call does not flood the trace; the stack figures then read 0).
# The trace takes about 2.5 GB in a temporary directory, removed at the end; python3 reads it in
# a few minutes. Needs qemu-system-arm, llvm-objdump and llvm-cxxfilt.
set -euo pipefail
cd "$(dirname "$0")"

target=thumbv7em-none-eabihf
target_dir="${CARGO_TARGET_DIR:-$PWD/target}/profile"
OTA_QEMU_NO_PAINT=1 CARGO_PROFILE_RELEASE_DEBUG=2 \
  cargo build --release --target "$target" --target-dir "$target_dir"
elf="$target_dir/$target/release/ota-qemu"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
llvm-objdump -d --no-show-raw-insn "$elf" > "$work/disassembly.txt"
timeout 900 qemu-system-arm -machine mps2-an386 -cpu cortex-m4 \
  -nographic -monitor none -serial none \
  -semihosting-config enable=on,target=native \
  -icount shift=0,align=off,sleep=off \
  -singlestep -d exec,nochain -D "$work/trace.log" \
  -kernel "$elf" | tail -n 1
python3 profile.py "$work/disassembly.txt" "$work/trace.log" "${1:-300}"
