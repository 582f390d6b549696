//! The secure upgrade on the embedded driver: the product key's modulus as a `&'static [u8]`
//! in `Settings::signing_key` (feature `signature`).

use ota_sim::signing_keys::TEST_PRIVATE_KEY_PEM;
use ota_sim::{Fault, JobSpec, PackageSigner, PackageSpec, Sim, SimConfig, TaskState, Times};

use super::support::{image, Device, SessionEnd, SECTOR, WAIT};
use super::{assert_installed, finish_upgrade, NEW, OLD};

/// A simulator with a signed package for one device that holds the product key.
fn signed_setup(firmware: &[u8]) -> (Sim, Device, std::sync::mpsc::Receiver<()>, ota_sim::JobId) {
    let sim = Sim::start(SimConfig::default()).unwrap();
    let info = sim.add_device().unwrap();
    let signer = PackageSigner::from_pem(TEST_PRIVATE_KEY_PEM).unwrap();
    let package = sim
        .add_package(signer.sign(PackageSpec::new(NEW, firmware.to_vec())))
        .unwrap();
    let job = sim.create_job(JobSpec::batch(package)).unwrap();
    let (mut device, booted) = Device::new(&sim, info);
    device.signing_key = Some(signer.public_modulus().leak());
    (sim, device, booted, job)
}

#[test]
fn a_signed_package_is_installed() {
    let firmware = image(5 * SECTOR + 9);
    let (sim, device, booted, job) = signed_setup(&firmware);
    finish_upgrade(&sim, &device, &booted, job);
    assert_installed(&device, &firmware);
}

#[test]
fn a_wrongly_signed_package_is_refused_and_never_activated() {
    let firmware = image(3 * SECTOR);
    let (sim, device, _booted, job) = signed_setup(&firmware);
    let wrong = sim.set_fault(&device.info, Fault::WrongSignature, Times::Always);
    let (session, stop) = device.boot(OLD);
    sim.wait_task_state(job, &device.info, TaskState::Failed, WAIT)
        .unwrap();
    let _ = stop.send(());
    assert_eq!(session.join().unwrap(), SessionEnd::Stopped);
    assert!(sim.fault_fired(wrong) >= 1);
    let failures: Vec<_> = sim
        .progress(&device.info)
        .into_iter()
        .filter(|p| p.step < 0)
        .collect();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(failures[0].step, -3);
    let desc = failures[0].desc.as_deref().unwrap_or_default();
    assert!(desc.contains("does not verify"), "{desc}");
    assert_eq!(device.booted_version(OLD, NEW), OLD, "never activated");
}

#[test]
fn a_key_that_is_not_rsa_2048_stops_the_driver_at_start() {
    let firmware = image(SECTOR);
    let (_sim, mut device, _booted, _job) = signed_setup(&firmware);
    device.signing_key = Some(&[0xC0; 128]);
    let (session, _stop) = device.boot(OLD);
    let refused = session.join().unwrap();
    assert!(
        matches!(
            refused,
            SessionEnd::Refused(ota_embedded::Error::Agent(ota_core::Error::InvalidConfig(why)))
                if why.contains("2048")
        ),
        "{refused:?}"
    );
}
