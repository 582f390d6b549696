//! The rarer branches: unusual server behaviour, slow storage, adapter mistakes, boot-time
//! records of every kind, and the queries in every phase.

use alloc::string::String;
use alloc::vec::Vec;
use alloc::{format, vec};
use core::time::Duration;

use crate::agent::{Action, Agent, BodyBuffer, Boot, Config, Event, FetchId, Notification, Phase};
use crate::error::Error;
use crate::record::{ImageId, Phase as RecordPhase, Record};
use crate::task::ExpectedDigest;
use crate::testkit::world::*;
use crate::time::Instant;

fn world(len: usize) -> World {
    let mut w = World::new(test_config(), test_image(len, 5));
    w.offer_task();
    w
}

fn boot(config: Config, running: &str, record: &[u8]) -> Agent {
    Agent::new(
        config,
        Boot {
            running_version: running,
            record: Some(record),
        },
        Instant::ZERO,
    )
    .unwrap()
}

fn record(phase: RecordPhase, module: &str) -> Vec<u8> {
    let r = Record {
        image: ImageId {
            module: module.into(),
            version: "2.0.0".into(),
            size: 3000,
            digest: ExpectedDigest::from_hex(TASK_DIGEST, &task_digest_hex(b"2.0.0")).unwrap(),
            mqtt_stream: None,
            files: 0,
            signature: None,
        },
        previous_version: "1.0.0".into(),
        phase,
    };
    let mut bytes = Vec::new();
    r.encode(&mut bytes);
    bytes
}

fn drain(agent: &mut Agent) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(a) = agent.poll_action() {
        out.push(match a {
            Action::Publish { topic, payload, .. } => {
                format!("publish {topic} {}", String::from_utf8_lossy(payload))
            }
            other => format!("{other:?}"),
        });
    }
    out
}

#[test]
fn a_short_body_or_a_closed_connection_is_retried_from_what_arrived() {
    let mut w = world(20_000);
    w.connect();
    w.faults.extend([Fault::ShortBody(7000), Fault::Closed]);
    assert_eq!(w.run(), Stop::Reboot);
    assert_eq!(w.fetch_offsets, vec![0, 7000, 7000]);
    assert_eq!(w.slot_image(), &w.image[..]);
}

#[test]
fn a_partial_206_is_continued_and_extra_bytes_are_refused() {
    let mut w = world(20_000);
    w.connect();
    w.faults.extend([
        Fault::CutAfter(3000),
        Fault::PartialRange {
            len: 4000,
            extra: 0,
        },
        Fault::PartialRange {
            len: 1000,
            extra: 9,
        },
    ]);
    assert_eq!(w.run(), Stop::Reboot);
    // 3000, then 3000..7000 as announced, then 7000..8000 with garbage after it: the range is
    // kept, the garbage refused, and the rest fetched again.
    assert_eq!(w.fetch_offsets, vec![0, 3000, 7000, 8000]);
    assert_eq!(w.slot_image(), &w.image[..]);
}

/// The server's odd behaviours through both body entry points: a 200 to a ranged request
/// (its first bytes skipped), a partial 206 with garbage after it, bytes past the image, a
/// short body. Reading into the lent block ends in the same fetches, reports and slot as
/// offering the bytes to `handle_body`.
#[test]
fn the_lent_block_and_handle_body_take_the_same_bytes() {
    // Each fault applies to one response; a 200 to a ranged request brings the rest at once.
    let stories = [
        vec![
            Fault::CutAfter(5000),
            Fault::PartialRange {
                len: 1000,
                extra: 9,
            },
            Fault::ShortBody(700),
            Fault::IgnoreRange,
        ],
        vec![Fault::CutAfter(7001), Fault::Extra(3)],
    ];
    let run = |faults: &[Fault], lend: bool, buffers: usize| {
        let mut config = test_config();
        config.write_buffers = buffers;
        let mut w = World::new(config, test_image(20_000, 5));
        w.offer_task();
        w.lend_body = lend;
        w.lazy_storage = buffers > 1;
        w.chunk_sizes = vec![1500, 333, 4096];
        w.connect();
        w.faults.extend(faults.iter().cloned());
        assert_eq!(w.run(), Stop::Reboot);
        assert_eq!(w.slot_image(), &w.image[..]);
        assert!(w.faults.is_empty(), "every fault was served");
        (w.fetch_offsets.clone(), w.progress.clone(), w.bytes_served)
    };
    for faults in &stories {
        for buffers in [1, 3] {
            let offered = run(faults, false, buffers);
            assert_eq!(offered.0.len(), faults.len(), "{:?}", offered.0);
            assert_eq!(
                run(faults, true, buffers),
                offered,
                "{buffers} staging blocks"
            );
        }
    }
}

#[test]
fn lent_block_contract_violations_are_errors() {
    let mut w = waiting_for_the_first_response();
    let now = w.now;
    let current = FetchId(0);
    assert_eq!(
        w.agent.body_buffer(now, current),
        Err(Error::BodyBeforeResponse)
    );
    assert_eq!(
        w.agent.body_buffer(now, FetchId(9)),
        Err(Error::UnknownFetch)
    );
    let ok = whole_body_response(current);
    w.agent.handle(now, ok).unwrap();
    let lent = match w.agent.body_buffer(now, current).unwrap() {
        BodyBuffer::Lent(buffer) => buffer.len(),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        w.agent.body_filled(now, current, lent + 1),
        Err(Error::BodyOverfilled)
    );
    assert_eq!(w.agent.fetched_size(), 0, "an error changes nothing");
    assert_eq!(w.agent.body_filled(now, current, 10), Ok(10));
    assert_eq!(w.agent.fetched_size(), 10);
}

#[test]
fn a_lent_block_does_not_outlive_the_next_input() {
    // `body_filled` reuses what `body_buffer` decided only until another input: bytes read
    // into a lend whose fetch failed meanwhile are dropped, not staged.
    let mut w = waiting_for_the_first_response();
    let now = w.now;
    let current = FetchId(0);
    let ok = whole_body_response(current);
    w.agent.handle(now, ok).unwrap();
    assert!(matches!(
        w.agent.body_buffer(now, current),
        Ok(BodyBuffer::Lent(_))
    ));
    let failed = Event::HttpFailed {
        fetch: current,
        reason: "connection reset",
    };
    w.agent.handle(now, failed).unwrap();
    while w.agent.poll_action().is_some() {}
    assert_eq!(
        w.agent.body_filled(now, current, 10),
        Ok(10),
        "taken and dropped"
    );
    assert_eq!(w.agent.fetched_size(), 0);
}

/// Performs the queued actions as a storage that always succeeds; returns the percentages
/// notified.
fn drain_answering(agent: &mut Agent, now: Instant) -> Vec<u8> {
    let mut percents = Vec::new();
    loop {
        let mut answer = None;
        while let Some(action) = agent.poll_action() {
            match action {
                Action::Write { .. } => answer = Some(Event::WriteDone),
                Action::SaveRecord { .. } => answer = Some(Event::RecordSaved),
                Action::Notify(Notification::Progress { percent, .. }) => percents.push(percent),
                _ => {}
            }
        }
        match answer {
            Some(event) => agent.handle(now, event).unwrap(),
            None => return percents,
        }
    }
}

#[test]
fn a_lent_block_filled_after_the_progress_interval_notifies_the_percentage() {
    // `body_buffer` decides how many bytes `body_filled` may stage with nothing else to do
    // for the clock it is given; filled once the progress interval has passed, the bytes
    // reach the next percentage (not the next step) and it is notified.
    let mut w = waiting_for_the_first_response();
    let t0 = w.now;
    let fetch = FetchId(0);
    let ok = whole_body_response(fetch);
    w.agent.handle(t0, ok).unwrap();
    assert!(drain_answering(&mut w.agent, t0).is_empty());
    assert_eq!(w.agent.handle_body(t0, fetch, &[0; 100]), Ok(100));
    assert_eq!(
        drain_answering(&mut w.agent, t0),
        vec![1],
        "the first chunk"
    );
    // 1 % is 200 bytes: 500 more make 3 %, short of the next step (6 %).
    assert!(matches!(
        w.agent.body_buffer(t0, fetch),
        Ok(BodyBuffer::Lent(b)) if b.len() > 500
    ));
    let later = t0 + test_config().progress_interval;
    assert_eq!(w.agent.body_filled(later, fetch, 500), Ok(500));
    assert_eq!(drain_answering(&mut w.agent, later), vec![3]);
    // Within the interval, only the next step (8 %, 1,600 bytes) is notified: 423 more bytes
    // (up to 5 %, the last byte the block takes before it is full) are not.
    assert!(matches!(
        w.agent.body_buffer(later, fetch),
        Ok(BodyBuffer::Lent(b)) if b.len() == 424
    ));
    assert_eq!(w.agent.body_filled(later, fetch, 423), Ok(423));
    assert!(drain_answering(&mut w.agent, later).is_empty());
    assert_eq!(w.agent.fetched_size(), 1023);
}

#[test]
fn after_a_quiet_fill_the_rest_of_the_block_is_lent() {
    // A fill that only stages leaves its lend in place, less the bytes filled: the next
    // `body_buffer` lends exactly the rest of the block, as deciding afresh would.
    let mut w = waiting_for_the_first_response();
    let now = w.now;
    let fetch = FetchId(0);
    let ok = whole_body_response(fetch);
    w.agent.handle(now, ok).unwrap();
    drain_answering(&mut w.agent, now);
    assert_eq!(w.agent.handle_body(now, fetch, &[0; 100]), Ok(100));
    drain_answering(&mut w.agent, now);
    let lent = |agent: &mut Agent| match agent.body_buffer(now, fetch) {
        Ok(BodyBuffer::Lent(b)) => b.len(),
        other => panic!("{other:?}"),
    };
    assert_eq!(lent(&mut w.agent), 924, "the rest of the 1,024-byte block");
    assert_eq!(w.agent.body_filled(now, fetch, 50), Ok(50));
    assert_eq!(w.agent.poll_action(), None, "a quiet fill queues nothing");
    assert_eq!(lent(&mut w.agent), 874);
    assert_eq!(w.agent.body_filled(now, fetch, 873), Ok(873));
    assert_eq!(lent(&mut w.agent), 1, "the last byte of the block");
    w.agent.handle_timeout(now).unwrap(); // an input: the lend is decided afresh
    assert_eq!(lent(&mut w.agent), 1);
    assert_eq!(w.agent.body_filled(now, fetch, 1), Ok(1));
    assert_eq!(w.agent.fetched_size(), 1024);
    assert!(
        matches!(w.agent.poll_action(), Some(Action::Write { offset: 0, data }) if data.len() == 1024),
        "the full block is written"
    );
}

#[test]
fn a_200_with_the_wrong_length_is_not_trusted() {
    let mut w = world(5000);
    w.connect();
    w.faults.push_back(Fault::WrongLength);
    assert_eq!(w.run(), Stop::Reboot);
    assert_eq!(w.fetch_offsets, vec![0, 0]);
    assert!(w.transcript.contains(&String::from("cancel 0")));
}

#[test]
fn an_unexpected_status_fails_the_download_at_once() {
    let mut w = world(5000);
    w.connect();
    w.faults.push_back(Fault::Status(400));
    assert_eq!(w.run(), Stop::Quiet);
    assert_eq!(w.progress, vec![-2]);
    assert!(w.outcomes[0].contains("unexpected HTTP status 400"));
}

#[test]
fn no_answer_to_a_url_refresh_is_retried_then_given_up() {
    let mut w = world(5000);
    w.connect();
    w.faults.push_back(Fault::CutAfter(1000));
    w.run_until(|w| w.agent.fetched_size() == 1000);
    w.url_valid_from = u32::MAX;
    w.reply_to_requests = false;
    w.run();
    assert!(
        w.outcomes[0].contains("no answer to the request for a fresh URL"),
        "{:?}",
        w.outcomes
    );
    assert_eq!(w.progress, vec![1, -2]);
}

#[test]
fn slow_storage_back_pressures_the_body_and_survives_a_replacing_push() {
    let mut w = world(30_000);
    w.lazy_storage = true;
    w.chunk_sizes = vec![5000];
    w.connect();
    w.run_until(|w| w.agent.fetched_size() >= 8192);
    w.image = test_image(9000, 77);
    w.version = "3.0.0".into();
    w.offer_task();
    w.push_task();
    assert_eq!(w.run(), Stop::Reboot);
    assert_eq!(w.slot_image(), &w.image[..]);
    assert_eq!(w.boot_next.as_deref(), Some("3.0.0"));
}

#[test]
fn queries_and_phases_through_activation_and_the_health_check() {
    let mut w = world(3000);
    w.health = Health::Silent;
    w.connect();
    w.run_until(|w| w.agent.phase() == Phase::Activating);
    assert_eq!(w.agent.file_size(), Some(3000));
    assert_eq!(w.agent.fetched_size(), 3000);
    assert!(w.agent.expected_digest().is_some());
    assert_eq!(w.agent.target_version(), Some("2.0.0"));
    assert!(w.agent.is_online());
    w.run();
    w.reboot();
    assert_eq!(w.agent.phase(), Phase::CheckingHealth);
    assert_eq!(w.agent.target_version(), Some("2.0.0"));
    assert_eq!(w.agent.running_version(), "2.0.0");
    assert_eq!(w.agent.file_size(), None);
    assert_eq!(w.agent.expected_digest(), None);
    assert_eq!(w.agent.fetched_size(), 0);
    // A push while checking health is left for later, and the new version is not reported
    // before the verdict (the cloud would mark the task succeeded on that report alone).
    w.connect();
    w.push_task();
    w.run_until(|w| w.messages.is_empty());
    assert_eq!(w.informs.len(), 1, "{:?}", w.informs);
    assert_eq!(w.agent.phase(), Phase::CheckingHealth);
    assert_eq!(
        w.agent.poll_timeout(),
        Some(Instant::ZERO + Duration::from_secs(120))
    );
    w.advance(Duration::from_secs(121));
    assert_eq!(w.run(), Stop::Reboot);
    assert_eq!(w.agent.phase(), Phase::RollingBack);
}

#[test]
fn records_of_another_module_or_with_a_bad_digest_state_are_handled() {
    let config = test_config();
    let mut agent = boot(
        config.clone(),
        "1.0.0",
        &record(RecordPhase::Activating, "MCU"),
    );
    assert!(
        drain(&mut agent).is_empty(),
        "another module's record is left alone"
    );
    let bad = record(
        RecordPhase::Downloading {
            file: 0,
            offset: 1024,
            digest_state: vec![1, 2, 3],
            step: 0,
        },
        "default",
    );
    let mut agent = boot(config, "1.0.0", &bad);
    let actions = drain(&mut agent);
    assert!(
        actions[0].contains("RecordDiscarded(Invalid)"),
        "{actions:?}"
    );
    assert_eq!(actions[1], "ClearRecord");
}

#[test]
fn booting_a_version_that_is_neither_target_nor_previous_is_reported() {
    let mut agent = boot(
        test_config(),
        "0.5.0",
        &record(RecordPhase::Activating, "default"),
    );
    let actions = drain(&mut agent);
    assert!(actions.iter().any(|a| a.contains("running 0.5.0 is neither the target 2.0.0 nor the previous 1.0.0")), "{actions:?}");
    agent.handle(Instant::ZERO, Event::RecordSaved).unwrap();
    agent.handle(Instant::ZERO, Event::Connected).unwrap();
    let actions = drain(&mut agent);
    assert!(
        actions
            .iter()
            .any(|a| a.contains(r#""step":"-1","desc":"running 0.5.0 is neither"#)),
        "{actions:?}"
    );
}

#[test]
fn a_completed_rollback_is_acknowledged_at_boot() {
    let mut agent = boot(
        test_config(),
        "1.0.0",
        &record(RecordPhase::RollingBack, "default"),
    );
    let actions = drain(&mut agent);
    assert!(actions[0].contains("RolledBack"), "{actions:?}");
    assert_eq!(actions[1], "ClearRecord");
    // A failed clear is retried at the next connect, not in a loop.
    agent
        .handle(Instant::ZERO, Event::RecordSaveFailed)
        .unwrap();
    assert!(drain(&mut agent).is_empty());
    agent.handle(Instant::ZERO, Event::Connected).unwrap();
    assert!(drain(&mut agent).contains(&String::from("ClearRecord")));
}

#[test]
fn offline_failure_reports_are_bounded() {
    let mut agent = first_boot_agent(test_config(), Instant::ZERO);
    let topic = "/ota/device/upgrade/a1TestPK001/dev01";
    for i in 0..6 {
        // Offline: messages do not normally arrive, but a broker may deliver queued ones.
        let payload = format!(r#"{{"code":"1000","data":{{"size":0,"version":"v{i}"}}}}"#);
        agent
            .handle(
                Instant::ZERO,
                Event::Message {
                    topic,
                    payload: payload.as_bytes(),
                },
            )
            .unwrap();
        drain(&mut agent);
    }
    agent.handle(Instant::ZERO, Event::Connected).unwrap();
    let reports = drain(&mut agent)
        .into_iter()
        .filter(|a| a.contains("progress"))
        .count();
    assert_eq!(
        reports, 4,
        "at most four failure reports are kept while offline"
    );
}

#[test]
fn messages_on_foreign_topics_and_stale_http_events_are_ignored() {
    let mut w = world(20_000);
    w.connect();
    w.faults.push_back(Fault::CutAfter(4000));
    w.run_until(|w| w.fetch_offsets.len() == 2);
    let stale = FetchId(0);
    let now = w.now;
    w.agent
        .handle(
            now,
            Event::Message {
                topic: "/ota/device/upgrade/other/dev01",
                payload: b"{}",
            },
        )
        .unwrap();
    w.agent
        .handle(
            now,
            Event::HttpResponse {
                fetch: stale,
                status: 200,
                content_length: None,
                content_range: None,
            },
        )
        .unwrap();
    assert_eq!(w.agent.handle_body(now, stale, b"abc"), Ok(3));
    assert_eq!(w.agent.body_buffer(now, stale), Ok(BodyBuffer::Unwanted));
    assert_eq!(w.agent.body_filled(now, stale, 5), Ok(5));
    w.agent
        .handle(now, Event::HttpEnd { fetch: stale })
        .unwrap();
    w.agent
        .handle(
            now,
            Event::HttpFailed {
                fetch: stale,
                reason: "late",
            },
        )
        .unwrap();
    assert_eq!(w.agent.queued_actions(), 0);
    assert_eq!(w.run(), Stop::Reboot);
    assert_eq!(w.slot_image(), &w.image[..]);
}

#[test]
fn http_contract_violations_are_errors() {
    let mut w = waiting_for_the_first_response();
    let now = w.now;
    let current = FetchId(0);
    assert_eq!(
        w.agent.handle_body(now, current, b"x"),
        Err(Error::BodyBeforeResponse)
    );
    let ok = whole_body_response(current);
    w.agent.handle(now, ok).unwrap();
    assert_eq!(w.agent.handle(now, ok), Err(Error::DuplicateResponse));
    assert_eq!(
        w.agent.handle(now, Event::HttpEnd { fetch: FetchId(9) }),
        Err(Error::UnknownFetch)
    );
}

#[test]
fn invalid_configurations_and_versions_are_refused() {
    let base = test_config();
    type Mutation = fn(&mut Config);
    #[allow(unused_mut)]
    let mut cases: Vec<(&str, Mutation)> = vec![
        ("module", |c| c.module = "a/b".into()),
        ("write_block", |c| c.write_block = 0),
        ("checkpoint", |c| c.checkpoint_interval = 0),
        // Rounded up to whole blocks it would overflow (it used to panic mid-download).
        ("checkpoint overflow", |c| c.checkpoint_interval = u64::MAX),
        ("progress", |c| c.progress_step = 0),
        ("timeouts", |c| c.stall_timeout = Duration::ZERO),
        ("back-off", |c| c.retry.base_delay = Duration::ZERO),
        ("ok", |_| {}),
    ];
    #[cfg(feature = "mqtt-channel")]
    cases.extend([
        ("mqtt block", (|c| c.mqtt.block_size = 0) as Mutation),
        ("mqtt timeout", |c| c.mqtt.reply_timeout = Duration::ZERO),
    ]);
    for (name, mutate) in cases {
        let mut config = base.clone();
        mutate(&mut config);
        let result = Agent::new(
            config,
            Boot {
                running_version: "1.0.0",
                record: None,
            },
            Instant::ZERO,
        );
        assert_eq!(result.is_ok(), name == "ok", "{name}");
    }
    let bad_version = Agent::new(
        base,
        Boot {
            running_version: "1 0",
            record: None,
        },
        Instant::ZERO,
    );
    assert!(matches!(bad_version, Err(Error::InvalidVersion)));
}

#[test]
fn poll_timeout_is_now_while_actions_wait() {
    let mut agent = first_boot_agent(test_config(), Instant::from_millis(7));
    agent
        .handle(Instant::from_millis(9), Event::Connected)
        .unwrap();
    assert_eq!(agent.poll_timeout(), Some(Instant::from_millis(9)));
    let first = agent.poll_action();
    assert!(matches!(first, Some(Action::Subscribe { .. })));
}

#[test]
fn a_failed_activation_record_save_reports_minus_4() {
    let mut w = world(3000);
    w.config.progress_step = 100;
    w.restart_agent();
    w.connect();
    // Saves: the first record, the first step, then the activation record.
    w.fail_save = Some(2);
    assert_eq!(w.run(), Stop::Quiet);
    assert_eq!(w.progress.last(), Some(&-4));
    assert!(
        w.outcomes[0].contains("activation record"),
        "{:?}",
        w.outcomes
    );
    assert!(!w.transcript.iter().any(|l| l.starts_with("activate")));
}

#[test]
fn unanswered_task_requests_are_remembered_only_a_few_at_a_time() {
    let mut w = world(3000);
    w.cloud_task = None;
    w.reply_to_requests = false;
    for _ in 0..12 {
        w.connect();
        w.run();
        w.disconnect();
        w.run();
    }
    w.connect();
    // An answer to the very first request (id 2) is no longer paired: taken as the default module's.
    let now = w.now;
    let topic = "/sys/a1TestPK001/dev01/thing/ota/firmware/get_reply";
    w.agent
        .handle(
            now,
            Event::Message {
                topic,
                payload: br#"{"id":2,"code":200,"data":{}}"#,
            },
        )
        .unwrap();
    assert_eq!(w.agent.phase(), Phase::Idle);
}

#[test]
fn offline_a_task_failure_report_outlives_any_number_of_refusals() {
    // Found by fuzzing: refusals queued while offline pushed a -4 out of the queue.
    let mut w = world(20_000);
    w.connect();
    w.faults.push_back(Fault::StallAfter(6000));
    w.run_until(|w| w.agent.fetched_size() == 6000);
    w.disconnect();
    w.fail_write = Some(w.writes + 1);
    w.run();
    for _ in 0..6 {
        // A broker may still hand over messages queued before the session dropped.
        w.deliver("/ota/device/upgrade/a1TestPK001/dev01", b"{not json");
    }
    w.connect();
    w.run();
    assert!(w.progress.contains(&-4), "{:?}", w.progress);
    assert_eq!(
        w.progress.iter().filter(|p| **p == -1).count(),
        3,
        "{:?}",
        w.progress
    );
}

/// A world of a 20,000-byte image whose first fetch is asked for and stalls before any
/// answer: the state the HTTP contract tests start from (the fetch is `FetchId(0)`).
fn waiting_for_the_first_response() -> World {
    let mut w = world(20_000);
    w.connect();
    w.faults.push_back(Fault::StallAfter(0));
    w.run_until(|w| !w.fetch_offsets.is_empty());
    w
}

/// The `200` with the whole image's length that answers `fetch` of
/// [`waiting_for_the_first_response`].
fn whole_body_response(fetch: FetchId) -> Event<'static> {
    Event::HttpResponse {
        fetch,
        status: 200,
        content_length: Some(20_000),
        content_range: None,
    }
}
