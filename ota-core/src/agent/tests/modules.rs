//! Several modules in one agent: a version report and a task request each, tasks run one
//! after another, reports and records name their module, undeclared modules are refused.

use alloc::string::String;
use alloc::vec::Vec;
use alloc::{format, vec};

use crate::agent::{Agent, Boot, Event};
use crate::record::{ImageId, Phase as RecordPhase, Record};
use crate::task::ExpectedDigest;
use crate::testkit::world::*;
use crate::time::Instant;

fn two_module_world() -> World {
    let mut config = test_config();
    config.extra_modules = vec![(String::from("MCU"), String::from("0.9.3"))];
    let mut w = World::new(config, test_image(12_000, 1));
    w.reply_to_requests = false;
    w
}

fn publishes(w: &World, kind: &str) -> Vec<String> {
    w.transcript
        .iter()
        .filter(|l| l.starts_with(&format!("pub {kind} ")))
        .cloned()
        .collect()
}

#[test]
fn every_module_reports_its_version_and_asks_for_its_task() {
    let mut w = two_module_world();
    w.connect();
    w.run();
    assert_eq!(
        w.informs,
        vec![String::from("1.0.0"), String::from("0.9.3")]
    );
    let gets = publishes(&w, "get");
    assert_eq!(gets.len(), 2);
    assert!(
        gets[0].contains(r#""params":{}"#) && gets[1].contains(r#""params":{"module":"MCU"}"#),
        "{gets:?}"
    );
}

#[test]
fn tasks_for_different_modules_run_one_after_another() {
    let mut w = two_module_world();
    w.connect();
    w.run();
    // The default module's task first, corrupted in transit so that it fails with -3...
    w.faults.push_back(Fault::Corrupt(100));
    w.offer_task();
    w.push_task();
    w.run_until(|w| w.agent.fetched_size() > 2000);
    // ...while the MCU's task arrives and waits.
    w.module = Some(String::from("MCU"));
    w.image = test_image(7000, 2);
    w.version = String::from("1.5.0");
    w.offer_task();
    w.push_task();
    assert_eq!(w.run(), Stop::Reboot);
    let reports = publishes(&w, "progress");
    let failure = reports
        .iter()
        .position(|r| r.contains(r#""step":"-3""#))
        .expect("-3 for the default module");
    assert!(!reports[failure].contains("module"), "{}", reports[failure]);
    let mcu: Vec<&String> = reports[failure + 1..].iter().collect();
    assert!(
        !mcu.is_empty() && mcu.iter().all(|r| r.contains(r#""module":"MCU""#)),
        "{mcu:?}"
    );
    assert_eq!(w.slot_image(), &w.image[..]);
    assert_eq!(w.boot_next.as_deref(), Some("1.5.0"));
    assert!(w.transcript.iter().any(|l| l == "activate 1.5.0"));
    let record = Record::decode(w.record.as_ref().unwrap()).unwrap();
    assert_eq!(
        (
            record.image.module.as_str(),
            record.previous_version.as_str()
        ),
        ("MCU", "0.9.3")
    );
}

#[test]
fn a_no_task_reply_for_one_module_leaves_the_others_download_alone() {
    let mut w = two_module_world();
    w.connect();
    w.run();
    w.faults.push_back(Fault::StallAfter(3000));
    w.offer_task();
    w.push_task();
    w.run_until(|w| w.agent.fetched_size() == 3000);
    // The answer to the MCU's request (id 4: inform, inform, get, get) says "no task".
    let topic = "/sys/a1TestPK001/dev01/thing/ota/firmware/get_reply";
    let now = w.now;
    w.agent
        .handle(
            now,
            Event::Message {
                topic,
                payload: br#"{"id":"4","code":200,"data":{}}"#,
            },
        )
        .unwrap();
    assert_eq!(w.run(), Stop::Reboot);
    assert!(
        w.outcomes.iter().all(|o| o != "canceled"),
        "{:?}",
        w.outcomes
    );
    assert_eq!(w.slot_image(), &w.image[..]);
}

#[test]
fn a_record_of_a_second_module_is_resumed_after_boot() {
    let mut config = test_config();
    config.extra_modules = vec![(String::from("MCU"), String::from("1.5.0"))];
    let record = Record {
        image: ImageId {
            module: "MCU".into(),
            version: "1.5.0".into(),
            size: 10,
            digest: ExpectedDigest::from_hex(TASK_DIGEST, &task_digest_hex(b"1.5.0")).unwrap(),
            mqtt_stream: None,
            files: 0,
            signature: None,
        },
        previous_version: "0.9.3".into(),
        phase: RecordPhase::Activating,
    };
    let mut bytes = Vec::new();
    record.encode(&mut bytes);
    let mut agent = Agent::new(
        config,
        Boot {
            running_version: "1.0.0",
            record: Some(&bytes),
        },
        Instant::ZERO,
    )
    .unwrap();
    let mut notes = Vec::new();
    while let Some(action) = agent.poll_action() {
        notes.push(format!("{action:?}"));
    }
    assert!(
        notes[0].contains("HealthCheckRequested { module: \"MCU\", version: \"1.5.0\" }"),
        "{notes:?}"
    );
    assert_eq!(agent.target_version(), Some("1.5.0"));
}

#[test]
fn duplicate_or_invalid_extra_modules_are_refused() {
    for extra in [("default", "1.0"), ("MCU", "1 0"), ("a/b", "1")] {
        let mut config = test_config();
        config.extra_modules = vec![(String::from(extra.0), String::from(extra.1))];
        assert!(
            Agent::new(
                config,
                Boot {
                    running_version: "1.0.0",
                    record: None
                },
                Instant::ZERO
            )
            .is_err(),
            "{extra:?}"
        );
    }
}
