//! What the `ota-agent` process tests share: its config file and its command line.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ota_sim::{DeviceInfo, Sim};

pub const AGENT: &str = env!("CARGO_BIN_EXE_ota-agent");

/// Writes a config file for `info` with its files in `dir` (plus `extra` lines) and a version
/// file saying 1.0.0; the secret comes from the environment (see [`agent`]).
pub fn write_config(sim: &Sim, info: &DeviceInfo, dir: &Path, extra: &str) -> PathBuf {
    let path = dir.join("agent.toml");
    let text = format!(
        r#"product_key = "{pk}"
device_name = "{dn}"
endpoint = "{host}:{port}"
tls = false
allow_http = true
version_file = "{dir}/version"
staging = "{dir}/staging.img"
record = "{dir}/ota.record"
target = "{dir}/firmware.img"
{extra}
"#,
        pk = info.id.product_key,
        dn = info.id.device_name,
        host = sim.mqtt_host(),
        port = sim.mqtt_port(),
        dir = dir.display(),
    );
    std::fs::write(&path, text).unwrap();
    std::fs::write(dir.join("version"), "1.0.0\n").unwrap();
    path
}

/// `ota-agent --config CONFIG` with the device secret in its environment.
pub fn agent(config: &Path, secret: &str) -> Command {
    let mut cmd = Command::new(AGENT);
    cmd.arg("--config")
        .arg(config)
        .arg("--progress=false")
        .env("OTA_DEVICE_SECRET", secret)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null());
    cmd
}
