//! The adapter-level crash sweep: the real `ota-agent` runs a whole upgrade (download,
//! checkpoints, verification, activation, version file; for a single image, for a multi-file
//! task, and for a single image staged on another filesystem) and is killed at each system
//! call that changes its files, one run per call. strace's fault injection delivers the SIGKILL on entry to the N-th call of a
//! kind on the agent's paths (`-e inject=CALL:signal=KILL:when=N -P PATH...`), so the call
//! never happens: that is a power cut right before it (the page cache aside: see
//! BENCHMARKS.md). After each kill the agent is started again against the same simulator and
//! the test checks that the installed files are exactly the old or the new ones, that the
//! version file names them, that the cloud was told the truth (task state and reported
//! version), that nothing beside the agent's files changed, and that a further run completes
//! the upgrade.
//!
//! strace is installed by `.ci/run`; without it (or without ptrace) the test says so and
//! passes. `CRASH_SWEEP_STRIDE=K` tries only every K-th crash point (for a quick look).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use ota_sim::{DeviceInfo, JobId, JobSpec, PackageId, PackageSpec, Sim, SimConfig, TaskState};

const AGENT: &str = env!("CARGO_BIN_EXE_ota-agent");

/// The calls that change files (and `openat`, which creates and truncates them; its read-only
/// uses are counted by strace but are not crash points of their own). `?`: a name this
/// architecture lacks is not an error.
const CALLS: &[&str] = &[
    "openat",
    "open",
    "creat",
    "write",
    "pwrite64",
    "writev",
    "pwritev",
    "pwritev2",
    "fsync",
    "fdatasync",
    "sync_file_range",
    "rename",
    "renameat",
    "renameat2",
    "link",
    "linkat",
    "unlink",
    "unlinkat",
    "mkdir",
    "mkdirat",
    "rmdir",
    "truncate",
    "ftruncate",
    "fallocate",
    "copy_file_range",
    "sendfile",
];

const WAIT: Duration = Duration::from_secs(60);

const OLD_IMAGE: &[u8] = b"the image of version 1.0.0\n";
const OLD_APP: &[u8] = b"app.bin of version 1.0.0\n";
/// Beside the agent's files, never to be changed.
const BYSTANDER: &str = "notes.txt";

fn image(len: usize, seed: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251 + seed) as u8).collect()
}

/// What a device should end with: the single image, or the files of a multi-file task.
#[derive(Clone)]
enum Upgrade {
    Image(Vec<u8>),
    Files(Vec<(&'static str, Vec<u8>)>),
}

/// What a device's directory shows.
#[derive(Debug, PartialEq, Eq)]
enum Installed {
    Old,
    New,
    Neither(String),
}

struct Scenario {
    name: &'static str,
    upgrade: Upgrade,
    package: PackageId,
    /// Staging on another filesystem (tmpfs), so that activation copies it first.
    staging_elsewhere: bool,
}

/// A device directory: its files, the agent's config beside it, the paths strace watches.
struct Device {
    info: DeviceInfo,
    job: JobId,
    /// Holds the config, the trace and `dir`; removed when dropped.
    root: tempfile::TempDir,
    /// The agent's directory, as a canonical path (strace matches resolved paths).
    dir: PathBuf,
    /// The staging file (in `dir`, or on another filesystem).
    staging: PathBuf,
    /// The other filesystem's directory, when staging is there.
    _elsewhere: Option<tempfile::TempDir>,
}

impl Device {
    fn dir(&self) -> PathBuf {
        self.dir.clone()
    }

    fn config(&self) -> PathBuf {
        self.root.path().join("agent.toml")
    }

    fn read(&self, name: &str) -> Option<Vec<u8>> {
        std::fs::read(self.dir().join(name)).ok()
    }

    /// Every path the agent may touch (strace's `-P` takes exact paths).
    fn agent_paths(&self, upgrade: &Upgrade) -> Vec<PathBuf> {
        let dir = self.dir();
        let mut names: Vec<String> = ["", "files"].iter().map(|s| s.to_string()).collect();
        let mut with_kin = |base: &str| {
            for suffix in [
                "",
                ".tmp",
                ".previous",
                ".previous.tmp",
                ".journal",
                ".journal.tmp",
            ] {
                names.push(format!("{base}{suffix}"));
            }
        };
        for base in ["staging.img", "ota.record", "firmware.img", "version"] {
            with_kin(base);
        }
        if let Upgrade::Files(files) = upgrade {
            for (name, _) in files {
                with_kin(&format!("files/{name}"));
            }
        }
        names.push(self.staging.display().to_string());
        names
            .iter()
            .map(|n| {
                if n.is_empty() {
                    dir.clone()
                } else {
                    dir.join(n)
                }
            })
            .collect()
    }

    /// The installed state: old, new, or a mix (a failure).
    fn installed(&self, upgrade: &Upgrade) -> Installed {
        let image = self.read("firmware.img");
        match upgrade {
            Upgrade::Image(new) => match image.as_deref() {
                Some(OLD_IMAGE) => Installed::Old,
                Some(bytes) if bytes == new.as_slice() => Installed::New,
                Some(bytes) => Installed::Neither(format!("firmware.img of {} bytes", bytes.len())),
                None => Installed::Neither("no firmware.img".into()),
            },
            Upgrade::Files(files) => {
                if image.as_deref() != Some(OLD_IMAGE) {
                    return Installed::Neither("firmware.img changed".into());
                }
                let app = self.read("files/app.bin");
                let all_new = files
                    .iter()
                    .all(|(name, data)| self.read(&format!("files/{name}")).as_ref() == Some(data));
                let only_old = app.as_deref() == Some(OLD_APP)
                    && files
                        .iter()
                        .filter(|(name, _)| *name != "app.bin")
                        .all(|(name, _)| self.read(&format!("files/{name}")).is_none());
                match (all_new, only_old) {
                    (true, _) => Installed::New,
                    (_, true) => Installed::Old,
                    _ => Installed::Neither(format!("files/ holds {:?}", self.listing("files"))),
                }
            }
        }
    }

    fn listing(&self, sub: &str) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.dir().join(sub))
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// Whether the agent is done with its task: no record and no journal left.
    fn is_settled(&self) -> bool {
        self.read("ota.record").is_none() && self.read("ota.record.journal").is_none()
    }
}

struct Sweep {
    sim: Sim,
}

impl Sweep {
    /// A fresh device running 1.0.0 (with a bystander file and, for multi-file tasks, the
    /// old `files/app.bin`), with a job for `scenario` aimed at it alone.
    fn device(&self, scenario: &Scenario) -> Device {
        let info = self.sim.add_device().unwrap();
        let job = self
            .sim
            .create_job(JobSpec::batch(scenario.package).devices(&[&info]))
            .unwrap();
        let root = tempfile::tempdir().unwrap();
        let root_path = root.path().canonicalize().unwrap();
        let dir = root_path.join("ota");
        std::fs::create_dir_all(dir.join("files")).unwrap();
        std::fs::write(dir.join("version"), "1.0.0\n").unwrap();
        std::fs::write(dir.join("firmware.img"), OLD_IMAGE).unwrap();
        std::fs::write(dir.join(BYSTANDER), b"not the agent's\n").unwrap();
        if let Upgrade::Files(_) = scenario.upgrade {
            std::fs::write(dir.join("files/app.bin"), OLD_APP).unwrap();
        }
        let elsewhere = scenario
            .staging_elsewhere
            .then(|| tempfile::tempdir_in("/dev/shm").unwrap());
        let staging = match &elsewhere {
            Some(other) => other.path().canonicalize().unwrap().join("staging.img"),
            None => dir.join("staging.img"),
        };
        // Large blocks and checkpoints for few calls; one staging block, so every file
        // call is on the agent's thread (strace counts calls per thread).
        let text = format!(
            r#"product_key = "{pk}"
device_name = "{dn}"
device_secret = "{secret}"
endpoint = "{host}:{port}"
tls = false
allow_http = true
version_file = "{dir}/version"
staging = "{staging}"
record = "{dir}/ota.record"
target = "{dir}/firmware.img"
files_dir = "{dir}/files"
write_block = 65536
write_buffers = 1
checkpoint_interval = 65536
"#,
            pk = info.id.product_key,
            dn = info.id.device_name,
            secret = info.device_secret,
            host = self.sim.mqtt_host(),
            port = self.sim.mqtt_port(),
            dir = dir.display(),
            staging = staging.display(),
        );
        std::fs::write(root_path.join("agent.toml"), text).unwrap();
        Device {
            info,
            job,
            root,
            dir,
            staging,
            _elsewhere: elsewhere,
        }
    }
}

fn agent(device: &Device) -> Command {
    let mut cmd = Command::new(AGENT);
    cmd.arg("--config")
        .arg(device.config())
        .arg("--progress=false")
        .arg("--exit-after-install")
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

/// `ota-agent` under strace, watching the agent's paths, killed at `inject` when given.
fn traced(
    device: &Device,
    upgrade: &Upgrade,
    trace: &Path,
    inject: Option<(&str, usize)>,
) -> Command {
    let mut cmd = Command::new("strace");
    cmd.args(["-f", "-qq", "-o"]).arg(trace);
    let calls: Vec<String> = CALLS.iter().map(|c| format!("?{c}")).collect();
    cmd.arg("-e").arg(format!("trace={}", calls.join(",")));
    if let Some((call, n)) = inject {
        cmd.arg("-e")
            .arg(format!("inject={call}:signal=KILL:when={n}"));
    }
    for path in device.agent_paths(upgrade) {
        cmd.arg("-P").arg(path);
    }
    let plain = agent(device);
    cmd.arg(plain.get_program()).args(plain.get_args());
    cmd.env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

fn wait(mut child: Child, limit: Duration) -> Result<ExitStatus, String> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            return Ok(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("still running after {limit:?}"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The crash points of a trace: each mutating call as (name, its rank among the calls of
/// that name, as strace's `when=` counts them), in order.
fn crash_points(trace: &str) -> Vec<(String, usize, String)> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut points = Vec::new();
    for line in trace.lines() {
        // "PID name(args) = result"; signals, exits and resumptions are not calls.
        let Some((_, call)) = line.split_once(' ') else {
            continue;
        };
        let call = call.trim_start();
        let Some((name, args)) = call.split_once('(') else {
            continue;
        };
        if name.starts_with('<') || name.contains(' ') || !CALLS.contains(&name) {
            continue;
        }
        let rank = seen.entry(name.to_owned()).or_default();
        *rank += 1;
        let read_only = matches!(name, "openat" | "open")
            && !["O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC"]
                .iter()
                .any(|flag| args.contains(flag));
        if !read_only {
            points.push((name.to_owned(), *rank, call.to_owned()));
        }
    }
    points
}

/// Whether /dev/shm is a filesystem of its own beside the temporary directory.
fn another_filesystem() -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let shm = std::fs::metadata("/dev/shm").map_err(|e| format!("/dev/shm: {e}"))?;
    let tmp = std::fs::metadata(std::env::temp_dir()).map_err(|e| e.to_string())?;
    if shm.dev() == tmp.dev() {
        return Err("/dev/shm is on the temporary directory's filesystem".into());
    }
    Ok(())
}

/// Whether strace can trace and inject here.
fn strace_works() -> Result<(), String> {
    let probe = Command::new("strace")
        .args([
            "-f",
            "-qq",
            "-o",
            "/dev/null",
            "-e",
            "inject=getpid:retval=1",
            "true",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    match probe {
        Ok(status) if status.success() => Ok(()),
        Ok(status) => Err(format!("strace cannot trace here ({status})")),
        Err(e) => Err(format!("strace is not installed ({e})")),
    }
}

impl Sweep {
    /// Starts the agent again (no strace) until its task is over, and checks the outcome.
    /// Returns the installed state after that run.
    fn restart_and_check(&self, scenario: &Scenario, device: &Device) -> Result<Installed, String> {
        let mut child = agent(device).spawn().map_err(|e| e.to_string())?;
        let deadline = Instant::now() + WAIT;
        // A task that ended before the kill leaves nothing to exit on: stop the agent once
        // its files are settled and the cloud's task is over.
        loop {
            if child.try_wait().map_err(|e| e.to_string())?.is_some() {
                break;
            }
            let over = self
                .sim
                .task(device.job, &device.info)
                .is_some_and(|t| !t.state.is_active());
            if over && device.is_settled() {
                std::thread::sleep(Duration::from_millis(300));
                let _ = Command::new("kill")
                    .arg("-TERM")
                    .arg(child.id().to_string())
                    .status();
                wait(child, WAIT)?;
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err("the restarted agent did not finish".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let installed = device.installed(&scenario.upgrade);
        let version = String::from_utf8_lossy(&device.read("version").unwrap_or_default())
            .trim()
            .to_owned();
        let expected = match &installed {
            Installed::Old => ("1.0.0", TaskState::Failed),
            Installed::New => ("2.0.0", TaskState::Succeeded),
            Installed::Neither(what) => return Err(format!("neither old nor new: {what}")),
        };
        if version != expected.0 {
            return Err(format!(
                "{installed:?} installed, the version file says {version}"
            ));
        }
        self.sim
            .wait_task_state(device.job, &device.info, expected.1, WAIT)
            .map_err(|e| format!("{installed:?} installed, but the cloud: {e:?}"))?;
        let reported = self.sim.device_version(&device.info, "default");
        if reported.as_deref() != Some(expected.0) {
            return Err(format!(
                "{installed:?} installed, the cloud heard {reported:?}"
            ));
        }
        check_bystanders(device, &scenario.upgrade)?;
        Ok(installed)
    }

    /// One crash point: kill the agent there, restart, check; then make sure a further run
    /// completes the upgrade.
    fn crash_at(&self, scenario: &Scenario, call: &str, n: usize) -> Result<bool, String> {
        let device = self.device(scenario);
        let trace = device.root.path().join("trace");
        let child = traced(&device, &scenario.upgrade, &trace, Some((call, n)))
            .spawn()
            .map_err(|e| e.to_string())?;
        let status = wait(child, WAIT)?;
        let killed = std::os::unix::process::ExitStatusExt::signal(&status) == Some(9);
        if self.restart_and_check(scenario, &device)? == Installed::Old {
            self.sim
                .retry_job(device.job)
                .map_err(|e| format!("{e:?}"))?;
            let status = wait(agent(&device).spawn().map_err(|e| e.to_string())?, WAIT)?;
            if !status.success() || device.installed(&scenario.upgrade) != Installed::New {
                return Err(format!(
                    "the upgrade after the failure did not complete ({status})"
                ));
            }
        }
        Ok(killed)
    }

    fn run(&self, scenario: &Scenario, stride: usize) -> (usize, usize, Vec<String>) {
        // The reference run: the whole upgrade, traced, to list its calls.
        let device = self.device(scenario);
        let trace = device.root.path().join("trace");
        let child = traced(&device, &scenario.upgrade, &trace, None)
            .spawn()
            .unwrap();
        let status = wait(child, WAIT).unwrap();
        assert!(
            status.success(),
            "{}: the traced upgrade exits 0 ({status})",
            scenario.name
        );
        assert_eq!(device.installed(&scenario.upgrade), Installed::New);
        let points = crash_points(&std::fs::read_to_string(&trace).unwrap());
        let started = Instant::now();
        let (mut tried, mut not_reached, mut bad) = (0, 0, Vec::new());
        for (call, n, text) in points.iter().step_by(stride.max(1)) {
            tried += 1;
            match self.crash_at(scenario, call, *n) {
                Ok(true) => {}
                Ok(false) => not_reached += 1,
                Err(e) => bad.push(format!(
                    "{}: killed at {call} #{n} ({text}): {e}",
                    scenario.name
                )),
            }
        }
        eprintln!(
            "{}: {tried} crash points of {} ({not_reached} not reached), {} bad, {:.1} s",
            scenario.name,
            points.len(),
            bad.len(),
            started.elapsed().as_secs_f64()
        );
        (tried, not_reached, bad)
    }
}

/// Nothing beside the agent's own files appeared or changed.
fn check_bystanders(device: &Device, upgrade: &Upgrade) -> Result<(), String> {
    if device.read(BYSTANDER).as_deref() != Some(b"not the agent's\n".as_slice()) {
        return Err(format!("{BYSTANDER} changed"));
    }
    let known: Vec<PathBuf> = device.agent_paths(upgrade);
    for sub in ["", "files"] {
        for name in device.listing(sub) {
            let path = device.dir().join(sub).join(&name);
            if !known.contains(&path) && name != BYSTANDER {
                return Err(format!("a stranger appeared: {}", path.display()));
            }
        }
    }
    let outside: Vec<String> = std::fs::read_dir(device.root.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !["ota", "agent.toml", "trace"].contains(&n.as_str()))
        .collect();
    if !outside.is_empty() {
        return Err(format!(
            "files appeared beside the agent's directory: {outside:?}"
        ));
    }
    Ok(())
}

#[test]
fn a_kill_at_every_file_system_call_of_an_upgrade_leaves_old_or_new_and_tells_the_truth() {
    if let Err(why) = strace_works() {
        eprintln!("skipped: {why}");
        return;
    }
    let stride = std::env::var("CRASH_SWEEP_STRIDE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let sim = Sim::start(SimConfig::default()).expect("simulator starts");
    let new_image = image(200_000, 1);
    let new_files = vec![
        ("app.bin", image(90_000, 2)),
        ("config.json", b"{\"mode\":\"fast\"}".to_vec()),
        ("assets.pak", image(70_001, 3)),
    ];
    let image_package = sim
        .add_package(PackageSpec::new("2.0.0", new_image.clone()))
        .unwrap();
    let files_package = sim
        .add_package(PackageSpec::files("2.0.0", new_files.clone()))
        .unwrap();
    let mut scenarios = vec![
        Scenario {
            name: "single image",
            upgrade: Upgrade::Image(new_image.clone()),
            package: image_package,
            staging_elsewhere: false,
        },
        Scenario {
            name: "multi-file",
            upgrade: Upgrade::Files(new_files),
            package: files_package,
            staging_elsewhere: false,
        },
    ];
    match another_filesystem() {
        Ok(()) => scenarios.push(Scenario {
            name: "single image, staging on another filesystem",
            upgrade: Upgrade::Image(new_image),
            package: image_package,
            staging_elsewhere: true,
        }),
        Err(why) => eprintln!("staging on another filesystem not swept: {why}"),
    }
    let sweep = Sweep { sim };
    let started = Instant::now();
    let (mut points, mut not_reached, mut bad) = (0, 0, Vec::new());
    for scenario in &scenarios {
        let (tried, missed, failures) = sweep.run(scenario, stride);
        points += tried;
        not_reached += missed;
        bad.extend(failures);
    }
    eprintln!(
        "{points} crash points, {} bad ({not_reached} not reached), {:.1} s",
        bad.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(bad.is_empty(), "{}", bad.join("\n"));
    assert!(
        points >= 40,
        "a whole upgrade has more file calls than {points}"
    );
}
