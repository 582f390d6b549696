//! Running the `ota-sim serve` process and reading what it serves, for the tests that put
//! ota-std's agent in front of it.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Guard timeout for anything that should happen promptly.
pub const WAIT: Duration = Duration::from_secs(5);

/// Deterministic test firmware of `len` bytes.
pub fn firmware(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

/// The `ota-sim` binary of this build. Cargo hands a package's tests only that package's own
/// binaries, so it is built here once, into the same target directory and profile.
fn ota_sim_bin() -> &'static PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        // target/{profile}/deps/e2e-HASH -> target/{profile}
        let exe = std::env::current_exe().unwrap();
        let profile_dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
        let mut build = Command::new(env!("CARGO"));
        build.args(["build", "--quiet", "-p", "ota-sim", "--bin", "ota-sim"]);
        if profile_dir.file_name().is_some_and(|p| p == "release") {
            build.arg("--release");
        }
        let target_dir = profile_dir.parent().unwrap();
        let status = build
            .arg("--target-dir")
            .arg(target_dir)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .unwrap();
        assert!(status.success(), "cargo build -p ota-sim failed");
        profile_dir.join("ota-sim")
    })
}

/// Kills the server when the test ends, however it ends.
pub struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits for an output line containing `needle`.
pub fn wait_line(lines: &mpsc::Receiver<String>, needle: &str) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return line,
            Ok(_) => {}
            Err(_) => panic!("no output line with {needle:?}"),
        }
    }
}

/// Starts `ota-sim serve` on free ports with `args`, writing its info file into `dir`; returns
/// the server, its output lines and the info once it is ready.
pub fn serve(
    args: &[&std::ffi::OsStr],
    dir: &std::path::Path,
) -> (Server, mpsc::Receiver<String>, serde_json::Value) {
    let info_path = dir.join("info.json");
    let child = Command::new(ota_sim_bin())
        .args(["serve", "--mqtt-port", "0", "--http-port", "0"])
        .args(args)
        .arg("--info-file")
        .arg(&info_path)
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut server = Server(child);
    let (tx, lines) = mpsc::channel();
    let stdout = server.0.stdout.take().unwrap();
    let stderr = server.0.stderr.take().unwrap();
    let readers: [Box<dyn Read + Send>; 2] = [Box::new(stdout), Box::new(stderr)];
    for reader in readers {
        let tx = tx.clone();
        std::thread::spawn(move || {
            // Reads to the end even when nobody listens any more: a full pipe would block
            // the server.
            for line in BufReader::new(reader).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
    }
    wait_line(&lines, "ready");
    let info = serde_json::from_slice(&std::fs::read(&info_path).unwrap()).unwrap();
    (server, lines, info)
}

/// GETs `url` (plain http) and returns the whole body.
pub fn http_get(url: &str) -> Vec<u8> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_recv_body(Some(WAIT))
        .max_idle_connections(0)
        .build()
        .into();
    let mut response = agent.get(url).call().expect("an HTTP response");
    let mut body = Vec::new();
    response
        .body_mut()
        .with_config()
        .limit(u64::MAX)
        .reader()
        .read_to_end(&mut body)
        .expect("the whole body");
    body
}
