//! The secure upgrade end to end: the `ota-agent` process, configured with the product's
//! public key, against the simulator signing its package (docs/protocol.md §11). A well signed
//! package is installed; a wrongly signed or unsigned one is refused with `-3` and never
//! activated.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ota_sim::signing_keys::{TEST_PRIVATE_KEY_PEM, TEST_PUBLIC_KEY_PEM};
use ota_sim::{
    DeviceInfo, Fault, JobId, PackageSigner, PackageSpec, SignMethod, Sim, SimConfig, TaskState,
    Times,
};

mod common;

const WAIT: Duration = Duration::from_secs(30);

fn image(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 13 + i / 509) as u8).collect()
}

/// Kills the agent when the test ends, however it ends.
struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A simulator with one device and a batch job for `spec`, signed with the test key.
fn signed_upgrade(spec: PackageSpec, sign: bool) -> (Sim, DeviceInfo, JobId) {
    let sim = Sim::start(SimConfig::default()).expect("simulator starts");
    let info = sim.add_device().unwrap();
    let spec = match sign {
        true => PackageSigner::from_pem(TEST_PRIVATE_KEY_PEM)
            .unwrap()
            .sign(spec),
        false => spec,
    };
    assert_eq!(spec.digestsign.is_some(), sign);
    let package = sim.add_package(spec).unwrap();
    let job = sim.create_job(ota_sim::JobSpec::batch(package)).unwrap();
    (sim, info, job)
}

/// Starts `ota-agent` for `info` with its files in `dir`, its key given by `key_setting`
/// (a line of the config file) and `extra` flags.
fn start_agent(
    sim: &Sim,
    info: &DeviceInfo,
    dir: &Path,
    key_setting: &str,
    extra: &[&str],
) -> Agent {
    let config = common::write_config(sim, info, dir, key_setting);
    let child = common::agent(&config, &info.device_secret)
        .args(extra)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Agent(child)
}

fn public_key_file(dir: &Path) -> PathBuf {
    let path = dir.join("product.pub.pem");
    std::fs::write(&path, TEST_PUBLIC_KEY_PEM).unwrap();
    path
}

/// The task failed with one `-3` whose text says `why`; nothing was installed.
fn assert_refused(sim: &Sim, info: &DeviceInfo, job: JobId, dir: &Path, why: &str) {
    sim.wait_task_state(job, info, TaskState::Failed, WAIT)
        .unwrap();
    let failures: Vec<_> = sim
        .progress(info)
        .into_iter()
        .filter(|p| p.step < 0)
        .collect();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(failures[0].step, -3);
    let desc = failures[0].desc.clone().unwrap_or_default();
    assert!(desc.contains(why), "{desc}");
    assert!(!dir.join("firmware.img").exists(), "nothing activated");
    assert_eq!(
        std::fs::read_to_string(dir.join("version")).unwrap(),
        "1.0.0\n"
    );
}

#[test]
fn a_signed_package_is_installed_by_a_device_with_the_key() {
    let data = image(300_000);
    let spec = PackageSpec::new("2.0.0", data.clone()).sign_method(SignMethod::Sha256);
    let (sim, info, job) = signed_upgrade(spec, true);
    let dir = tempfile::tempdir().unwrap();
    let key = public_key_file(dir.path());
    let setting = format!("signing_key = \"{}\"", key.display());
    let _agent = start_agent(&sim, &info, dir.path(), &setting, &[]);
    sim.wait_task_state(job, &info, TaskState::Succeeded, WAIT)
        .unwrap();
    assert_eq!(
        std::fs::read(dir.path().join("firmware.img")).unwrap(),
        data
    );
    assert!(sim.progress_steps(&info).iter().all(|s| *s >= 0));
}

#[test]
fn a_wrongly_signed_package_is_refused_and_never_activated() {
    let (sim, info, job) = signed_upgrade(PackageSpec::new("2.0.0", image(200_000)), true);
    let wrong = sim.set_fault(&info, Fault::WrongSignature, Times::Always);
    let dir = tempfile::tempdir().unwrap();
    // The key as the console shows it, given on the command line.
    let key = dir.path().join("console.txt");
    let signer_pem = ota_std::signing_key::parse_signing_key(TEST_PUBLIC_KEY_PEM).unwrap();
    let n: String = signer_pem
        .modulus()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect();
    std::fs::write(&key, format!("n: {n}\ne: 010001\n")).unwrap();
    let flag = format!("--signing-key={}", key.display());
    let _agent = start_agent(&sim, &info, dir.path(), "", &[&flag]);
    assert_refused(&sim, &info, job, dir.path(), "does not verify");
    assert!(sim.fault_fired(wrong) >= 1);
}

#[test]
fn an_unsigned_package_is_refused_by_a_device_with_a_key() {
    let (sim, info, job) = signed_upgrade(PackageSpec::new("2.0.0", image(50_000)), false);
    let dir = tempfile::tempdir().unwrap();
    let key = public_key_file(dir.path());
    let setting = format!("signing_key = \"{}\"", key.display());
    let _agent = start_agent(&sim, &info, dir.path(), &setting, &[]);
    assert_refused(&sim, &info, job, dir.path(), "missing");
}

#[test]
fn an_unusable_key_file_stops_the_agent_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("short.txt");
    std::fs::write(&key, "n: 00c0ffee\ne: 010001\n").unwrap();
    let output = Command::new(common::AGENT)
        .arg(format!("--signing-key={}", key.display()))
        .args([
            "--product-key=a1PK",
            "--device-name=dev01",
            "--device-secret=s",
        ])
        .args(["--endpoint=127.0.0.1:1", "--running-version=1.0.0"])
        .args([
            "--staging=/tmp/x/staging.img",
            "--record=/tmp/x/r",
            "--target=/tmp/x/fw",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("signing key") && stderr.contains("2048"),
        "{stderr}"
    );
}
