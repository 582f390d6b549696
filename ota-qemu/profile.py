#!/usr/bin/env python3
"""Call-tree instruction profile of ota-qemu's download phase (run by profile.sh).

Reads the firmware's disassembly (llvm-objdump -d) and a QEMU trace of every instruction
executed (-singlestep -d exec,nochain: one "Trace" line per instruction, its PC second in the
brackets). A shadow stack is kept from the trace: a `bl`/`blx` pushes its return address, and
reaching an address on the stack pops to it. Between the entry of scenario::download and that
of scenario::reboot, every instruction is counted, inclusively, under each function on the
stack below the probe's `apart` frame (one `apart` per kind of call, so each root is one kind
of call into the agent); the machine outliner's OUTLINED_FUNCTION_* are folded into their
callers. Prints the tree, each line the instructions counted under that path.

Usage: profile.py DISASSEMBLY TRACE [MIN_INSTRUCTIONS]
"""
import collections
import re
import subprocess
import sys

DEPTH = 5

def main():
    dis, trace = sys.argv[1], sys.argv[2]
    least = int(sys.argv[3]) if len(sys.argv) > 3 else 300
    func_re = re.compile(r'^([0-9a-f]+) <(.*)>:$')
    ins_re = re.compile(r'^\s+([0-9a-f]+):\s+(\S+)')
    funcof, calls, entry, addrs = {}, set(), {}, []
    current = None
    with open(dis) as f:
        for line in f:
            m = func_re.match(line)
            if m:
                current = m.group(2)
                continue
            m = ins_re.match(line)
            if m and current:
                a = int(m.group(1), 16)
                addrs.append(a)
                funcof[a] = current
                entry.setdefault(current, a)
                if m.group(2) in ('bl', 'blx'):
                    calls.add(a)
    addrs.sort()
    after = {addrs[i]: addrs[i + 1] for i in range(len(addrs) - 1)}
    start = {a for n, a in entry.items() if '8scenario8download' in n}
    stop = {a for n, a in entry.items() if '8scenario6reboot' in n}
    stack = []  # [callee, return address]
    pending = False
    inside = False
    tree = collections.Counter()
    with open(trace) as f:
        for line in f:
            if not line.startswith('Trace'):
                continue
            i = line.find('[')
            j = line.find('/', i)
            pc = int(line[j + 1:j + 9], 16)
            if stack and pc == stack[-1][1]:
                stack.pop()
            elif stack:
                for k in range(len(stack) - 2, -1, -1):
                    if stack[k][1] == pc:
                        del stack[k:]
                        break
            fn = funcof.get(pc, '?')
            if pending:
                stack[-1][0] = fn
                pending = False
            if pc in start:
                inside = True
            elif pc in stop:
                inside = False
            if inside:
                names = [s[0] for s in stack] + [fn]
                root = next((k for k, n in enumerate(names) if '5probe5apart' in n), None)
                if root is not None:
                    path = [names[root]]
                    for n in names[root + 1:]:
                        if not n.startswith('OUTLINED_FUNCTION') and n != path[-1]:
                            path.append(n)
                    for d in range(1, min(len(path), DEPTH) + 1):
                        tree[tuple(path[:d])] += 1
            if pc in calls:
                stack.append([None, after[pc]])
                pending = True
    names = sorted({n for k in tree for n in k})
    out = subprocess.run(['llvm-cxxfilt'], input='\n'.join(names), capture_output=True,
                         text=True).stdout.split('\n')
    pretty = {n: re.sub(r'::h[0-9a-f]{16}$', '', d) for n, d in zip(names, out)}
    children = collections.defaultdict(list)
    for k in tree:
        children[k[:-1]].append(k)
    def show(prefix, depth):
        for k in sorted(children[prefix], key=lambda k: -tree[k]):
            if tree[k] >= least:
                print(f"{'  ' * depth}{tree[k]:>9}  {pretty.get(k[-1], k[-1])}")
                show(k, depth + 1)
    show((), 0)

main()
