#!/usr/bin/env python3
"""Measures ota-gateway against `ota-sim serve` on loopback: 1 gateway, S sub-devices, an
image of SIZE bytes, --max-parallel N. Prints the wall time from the gateway's start to the
last "upgraded to" line, and the gateway's peak RSS (from /usr/bin/time -v).

Usage: benches/scripts/gateway_run.py SUBDEVICES SIZE MAX_PARALLEL [RATE]
(release binaries in target/release; RATE: bytes per second per sub-device, 0 = unlimited)
"""
import json, os, re, subprocess, sys, tempfile, time

subs, size, parallel = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
rate = int(sys.argv[4]) if len(sys.argv) > 4 else 0
root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sim_bin = os.path.join(root, "target/release/ota-sim")
gw_bin = os.path.join(root, "target/release/ota-gateway")
d = tempfile.mkdtemp()
fw = os.path.join(d, "fw.bin")
with open(fw, "wb") as f:
    f.write(os.urandom(size))
info_path = os.path.join(d, "info.json")
args = [sim_bin, "serve", "--firmware", fw, "--version", "2.0.0", "--mqtt-port", "0",
        "--http-port", "0", "--info-file", info_path, "--gateways", "1",
        "--subdevices-per-gateway", str(subs), "--preset-topology"]
if rate:
    args += ["--fault", f"rate:{rate}@always"]
sim = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
for line in sim.stderr:
    if "ready" in line:
        break
subprocess.Popen(["cat"], stdin=sim.stderr, stdout=subprocess.DEVNULL)
info = json.load(open(info_path))
gw = info["gateways"][0]
toml = [f'product_key = "{gw["product_key"]}"', f'device_name = "{gw["device_name"]}"',
        f'device_secret = "{gw["device_secret"]}"',
        f'endpoint = "{info["mqtt_host"]}:{info["mqtt_port"]}"', "tls = false",
        "allow_http = true"]
for s in gw["subdevices"]:
    toml += ["", "[[subdevice]]", f'product_key = "{s["product_key"]}"',
             f'device_name = "{s["device_name"]}"', f'device_secret = "{s["device_secret"]}"',
             'version = "1.0.0"', f'dir = "{d}/{s["device_name"]}"',
             'flasher = "true"']
cfg = os.path.join(d, "gateway.toml")
open(cfg, "w").write("\n".join(toml) + "\n")
start = time.monotonic()
gwp = subprocess.Popen(["/usr/bin/time", "-v", gw_bin, "--config", cfg, "--max-parallel",
                        str(parallel)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True)
done = 0
for line in gwp.stdout:
    if "upgraded to 2.0.0" in line:
        done += 1
        if done == subs:
            wall = time.monotonic() - start
            break
# Stop the gateway itself (the child of /usr/bin/time, by its id): SIGTERM is a clean stop.
children = open(f"/proc/{gwp.pid}/task/{gwp.pid}/children").read().split()
for child in children:
    os.kill(int(child), 15)
err = gwp.communicate(timeout=30)[1]
rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", err)
sim.terminate()
sim.wait()
print(f"subdevices={subs} size={size} max_parallel={parallel} rate={rate or 'unlimited'} "
      f"wall={wall:.2f}s peak_rss={rss.group(1) if rss else '?'}KiB")
