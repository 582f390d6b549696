//! The `ota-gateway` binary as a process: one gateway updating its sub-devices from its TOML
//! file, a line per event, and one-line errors.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ota_sim::{DeviceInfo, JobSpec, PackageSpec, Sim, SimConfig, TaskState};

const GATEWAY: &str = env!("CARGO_BIN_EXE_ota-gateway");
const WAIT: Duration = Duration::from_secs(30);

fn config(sim: &Sim, gw: &DeviceInfo, subs: &[DeviceInfo], dir: &Path) -> std::path::PathBuf {
    let mut text = format!(
        "product_key = \"{}\"\ndevice_name = \"{}\"\nendpoint = \"{}:{}\"\ntls = false\n\
         allow_http = true\nmax_parallel = 2\n",
        gw.id.product_key,
        gw.id.device_name,
        sim.mqtt_host(),
        sim.mqtt_port()
    );
    for sub in subs {
        let name = &sub.id.device_name;
        text += &format!(
            "\n[[subdevice]]\nproduct_key = \"{}\"\ndevice_name = \"{name}\"\n\
             device_secret = \"{}\"\nversion = \"1.0.0\"\ndir = \"{}\"\n\
             flasher = 'cp \"$OTA_IMAGE\" \"{}/$OTA_SUBDEVICE.bin\"'\n",
            sub.id.product_key,
            sub.device_secret,
            dir.join(name).display(),
            dir.display()
        );
    }
    let path = dir.join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn the_gateway_updates_its_sub_devices_from_its_config_file() {
    let sim = Sim::start(SimConfig::default()).unwrap();
    let gw = sim.add_gateway().unwrap();
    let subs = [
        sim.add_subdevice(&gw).unwrap(),
        sim.add_subdevice(&gw).unwrap(),
    ];
    let image: Vec<u8> = (0..300_000u32).map(|i| (i * 7) as u8).collect();
    let package = sim
        .add_package(PackageSpec::new("2.0.0", image.clone()))
        .unwrap();
    let job = sim.create_job(JobSpec::batch(package).dynamic()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = config(&sim, &gw, &subs, dir.path());
    let mut child = Command::new(GATEWAY)
        .arg("--config")
        .arg(&path)
        .env("OTA_DEVICE_SECRET", &gw.device_secret)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let (tx, lines) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + WAIT;
    let mut upgraded = 0;
    let mut seen = Vec::new();
    while upgraded < 2 {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no end; lines {seen:?}"));
        upgraded += usize::from(line.ends_with(": upgraded to 2.0.0"));
        seen.push(line);
    }
    for sub in &subs {
        // The version report on the sub-device's behalf is what completes the cloud's task.
        sim.wait_task_state(job, sub, TaskState::Succeeded, WAIT)
            .unwrap();
    }
    let _ = child.kill();
    let _ = child.wait();
    for sub in &subs {
        let name = &sub.id.device_name;
        assert!(seen.contains(&format!("{name}: online")), "{seen:?}");
        assert!(
            seen.contains(&format!("{name}: flashing 2.0.0")),
            "{seen:?}"
        );
        assert_eq!(
            std::fs::read(dir.path().join(format!("{name}.bin"))).unwrap(),
            image
        );
    }
}

#[test]
fn config_errors_are_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(
        &path,
        "product_key = \"a1GwPK00001\"\ndevice_name = \"gw1\"\n",
    )
    .unwrap();
    for (args, mentions) in [
        (vec!["--config", path.to_str().unwrap()], "device_secret"),
        (vec!["--config", "/nonexistent.toml"], "/nonexistent.toml"),
        (vec!["--bogus"], "--bogus"),
    ] {
        let output = Command::new(GATEWAY)
            .args(&args)
            .env_remove("OTA_DEVICE_SECRET")
            .output()
            .unwrap();
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.starts_with("ota-gateway: ") && stderr.contains(mentions),
            "{stderr}"
        );
    }
}
