//! The secure upgrade (docs/protocol.md §11): with a key, only a task whose `digestsign`
//! verifies over its image digest is activated; every other case is one `-3` that says
//! why, the record cleared, nothing activated.

use alloc::string::String;
use alloc::vec;

use crate::signature::PackageKey;
use crate::testkit::signing::{test_key, test_modulus};
use crate::testkit::world::*;

/// A device holding the test key, offered a task signed per `signing`.
fn keyed_world(signing: Signing, sha256: bool) -> World {
    let mut config = test_config();
    config.package_key = Some(test_key());
    let mut w = World::new(config, test_image(20_000, 9));
    w.signing = signing;
    if sha256 {
        w.offer_sha256_task();
    } else {
        w.offer_task();
    }
    w
}

/// Runs the offered task and checks it was refused with one `-3` whose text has `why`.
fn assert_refused(mut w: World, why: &str) {
    w.connect();
    assert_eq!(w.run(), Stop::Quiet);
    assert_eq!(w.progress.iter().filter(|p| **p < 0).count(), 1);
    assert_eq!(w.progress.last(), Some(&-3));
    assert!(
        !w.transcript.iter().any(|l| l.starts_with("activate")),
        "activated: {:?}",
        w.transcript
    );
    assert!(w.boot_next.is_none());
    assert_eq!(w.record, None, "record cleared");
    assert_eq!(w.outcomes.len(), 1);
    assert!(
        w.outcomes[0].starts_with("failed -3 package signature") && w.outcomes[0].contains(why),
        "{:?}",
        w.outcomes
    );
}

#[test]
fn signed_md5_and_sha256_tasks_are_installed() {
    for sha256 in [false, true] {
        let mut w = keyed_world(Signing::Signed, sha256);
        w.connect();
        assert_eq!(w.run(), Stop::Reboot, "sha256 {sha256}");
        assert_eq!(w.slot_image(), &w.image[..]);
        assert_eq!(w.boot_next.as_deref(), Some("2.0.0"));
        w.reboot();
        w.connect();
        assert_eq!(w.run(), Stop::Quiet);
        assert_eq!(w.running, "2.0.0");
        assert!(w.confirmed);
        assert!(!w.progress.iter().any(|p| *p < 0), "{:?}", w.progress);
    }
}

#[test]
fn an_image_signed_over_another_digest_is_refused() {
    // The digest matches the bytes (as a tampered push would make it), the signature is
    // genuine but vouches for another image.
    for sha256 in [false, true] {
        assert_refused(
            keyed_world(Signing::OverOtherDigest, sha256),
            "does not verify",
        );
    }
}

#[test]
fn a_missing_signature_is_refused() {
    assert_refused(keyed_world(Signing::Unsigned, false), "missing");
}

#[test]
fn a_garbage_signature_is_refused() {
    assert_refused(keyed_world(Signing::Garbage, true), "malformed");
}

#[test]
fn a_device_without_a_key_passes_the_signature_through() {
    let mut w = World::new(test_config(), test_image(5000, 4));
    w.signing = Signing::OverOtherDigest;
    w.offer_task();
    w.connect();
    assert_eq!(w.run(), Stop::Reboot);
}

#[test]
fn keys_other_than_rsa_2048_with_exponent_65537_are_configuration_errors() {
    let n = test_modulus();
    assert!(PackageKey::from_modulus(&n).is_ok());
    let mut padded = vec![0, 0];
    padded.extend_from_slice(&n);
    assert_eq!(PackageKey::from_modulus(&padded), Ok(test_key()));
    assert_eq!(test_key().modulus(), n);
    for wrong_size in [
        &n[..128],
        &n[1..],
        &[n.as_slice(), &[7]].concat()[..],
        &[][..],
    ] {
        assert!(
            PackageKey::from_modulus(wrong_size).is_err(),
            "{} bytes",
            wrong_size.len()
        );
    }
    assert!(PackageKey::from_parts(&n, &[3]).is_err());
    assert!(PackageKey::from_parts(&n, &[0, 1, 0, 1]).is_ok());
    // An even modulus cannot be an RSA key.
    let mut even = n.clone();
    even[255] &= 0xFE;
    assert!(PackageKey::from_modulus(&even).is_err());
}

#[test]
fn a_restored_download_is_checked_again_and_a_bad_signature_ends_it_at_boot() {
    let mut w = keyed_world(Signing::OverOtherDigest, false);
    w.connect();
    w.cut = Some(Cut::Write { n: 8, torn: 0 });
    assert_eq!(w.run(), Stop::PowerLost);
    assert!(w.record.is_some(), "a checkpoint was saved");
    let fetches = w.fetch_offsets.len();
    w.reboot();
    w.connect();
    assert_eq!(w.run(), Stop::Quiet);
    assert_eq!(
        w.fetch_offsets.len(),
        fetches,
        "the download is not resumed"
    );
    assert_eq!(w.record, None);
    assert_eq!(w.progress.last(), Some(&-3));
    assert!(w.boot_next.is_none());
    assert!(
        w.outcomes
            .iter()
            .any(|o| o.starts_with("failed -3 package signature does not verify")),
        "{:?}",
        w.outcomes
    );
}

#[test]
fn a_restored_signed_download_resumes_and_installs() {
    let mut w = keyed_world(Signing::Signed, true);
    w.connect();
    w.cut = Some(Cut::Write { n: 8, torn: 100 });
    assert_eq!(w.run(), Stop::PowerLost);
    w.reboot();
    w.connect();
    assert_eq!(w.run(), Stop::Reboot);
    assert!(w.fetch_offsets[1] > 0, "resumed, not restarted");
    assert_eq!(w.slot_image(), &w.image[..]);
}

#[test]
fn a_multi_file_task_without_per_file_signatures_is_refused() {
    let mut config = test_config();
    config.package_key = Some(test_key());
    let mut w = World::new(config, vec![]);
    w.offer_files_task(vec![test_image(3000, 1), test_image(2000, 2)]);
    w.connect();
    assert_eq!(w.run(), Stop::Quiet);
    assert_eq!(w.progress.last(), Some(&-3));
    assert!(w.boot_next.is_none());
    let expected = String::from("failed -3 package signature: a multi-file task");
    assert!(w.outcomes[0].starts_with(&expected), "{:?}", w.outcomes);
}
