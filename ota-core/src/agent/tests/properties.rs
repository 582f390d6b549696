//! Property tests of the whole lifecycle: random tasks, chunkings and event sequences with
//! faults, checked at every step by the simulated world's invariants and, for benign
//! sequences, against the reference model (the upgrade must succeed).

use alloc::vec;
use alloc::vec::Vec;
use proptest::prelude::*;

use crate::testkit::ops::{built_in, run, Op, Scenario};
use crate::testkit::world::{Fault, MqttFault};

fn mqtt_fault() -> impl Strategy<Value = Op> {
    prop_oneof![
        Just(MqttFault::Drop),
        Just(MqttFault::Duplicate),
        Just(MqttFault::Corrupt),
        Just(MqttFault::WrongOffset),
        Just(MqttFault::Refuse),
        Just(MqttFault::Hold),
    ]
    .prop_map(Op::Mqtt)
}

fn fault() -> impl Strategy<Value = Fault> {
    prop_oneof![
        prop_oneof![
            Just(500u16),
            Just(503),
            Just(403),
            Just(404),
            Just(400),
            Just(416)
        ]
        .prop_map(Fault::Status),
        Just(Fault::IgnoreRange),
        (0usize..30_000).prop_map(Fault::CutAfter),
        (0usize..30_000).prop_map(Fault::StallAfter),
        (0u64..30_000).prop_map(Fault::Corrupt),
        Just(Fault::WrongRange),
        (1usize..5000).prop_map(Fault::Extra),
        Just(Fault::Refuse),
        (0usize..30_000).prop_map(Fault::ShortBody),
        Just(Fault::Closed),
        Just(Fault::WrongLength),
        (1usize..30_000, prop_oneof![Just(0usize), Just(5)])
            .prop_map(|(len, extra)| Fault::PartialRange { len, extra }),
    ]
}

fn benign_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        // Few inputs between operations, so that faults land in the middle of downloads.
        6 => (0u8..24).prop_map(Op::Steps),
        1 => Just(Op::Connect),
        1 => Just(Op::Disconnect),
        1 => Just(Op::PushSameTask),
        1 => (0u16..200).prop_map(Op::AdvanceSecs),
        1 => (0u16..1100).prop_map(Op::CutNextWrite),
        1 => Just(Op::CutNextSave),
                1 => Just(Op::ExpireUrls),
        2 => mqtt_fault(),
        3 => prop_oneof![
            Just(Fault::Status(500)),
            Just(Fault::IgnoreRange),
            (0usize..30_000).prop_map(Fault::CutAfter),
            (0usize..30_000).prop_map(Fault::StallAfter),
                        Just(Fault::WrongRange),
            Just(Fault::Refuse),
            (0usize..30_000).prop_map(Fault::ShortBody),
            Just(Fault::Closed),
            Just(Fault::WrongLength),
            (1usize..30_000).prop_map(|len| Fault::PartialRange { len, extra: 0 }),
        ].prop_map(Op::Fault),
    ]
}

fn any_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        10 => benign_op(),
        1 => any::<u8>().prop_map(Op::ReplaceTask),
        1 => any::<u8>().prop_map(Op::ReplaceTaskMissigned),
        1 => any::<u8>().prop_map(Op::PushGarbage),
        2 => fault().prop_map(Op::Fault),
        1 => Just(Op::FailNextWrite),
        1 => Just(Op::FailNextSave),
        1 => Just(Op::FailActivation),
        1 => Just(Op::DropTask),
        1 => Just(Op::Unhealthy),
    ]
}

fn scenario(op: impl Strategy<Value = Op>) -> impl Strategy<Value = Scenario> {
    (
        1usize..24_000,
        any::<bool>(),
        any::<bool>(),
        proptest::option::of(1u8..4),
        any::<bool>(),
        (1usize..=3, any::<bool>()),
        proptest::collection::vec(1usize..9000, 1..4),
        proptest::collection::vec(op, 0..40),
        // Signing on in a quarter of the scenarios of a build with the verifier.
        proptest::bool::weighted(if cfg!(feature = "signature") {
            0.25
        } else {
            0.0
        }),
    )
        .prop_map(
            |(
                image_len,
                sha256,
                lazy_storage,
                mqtt_window,
                multi_file,
                (write_buffers, lend_body),
                chunk_sizes,
                ops,
                signed,
            )| {
                let (sha256, mqtt_window, multi_file) = built_in(sha256, mqtt_window, multi_file);
                Scenario {
                    image_len,
                    sha256,
                    lazy_storage,
                    mqtt_window,
                    multi_file,
                    signed,
                    write_buffers,
                    lend_body,
                    chunk_sizes,
                    ops,
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Any chunking, any interleaving of disconnects, power cuts, expiries and transient
    /// faults within budget: the right image is installed, verified and confirmed.
    #[test]
    fn benign_sequences_always_upgrade(s in scenario(benign_op())) {
        prop_assume!(s.is_benign());
        let w = run(&s);
        prop_assert_eq!(&w.running, &w.version);
    }

    /// Any sequence at all: no invariant ever breaks, nothing panics, and the story ends
    /// either on the new version or on the old one with every failure reported.
    #[test]
    fn arbitrary_sequences_keep_every_invariant(s in scenario(any_op())) {
        let w = run(&s);
        prop_assert!(w.running == "1.0.0" || w.was_offered(&w.running), "running {}", w.running);
    }
}

#[test]
fn fuzzer_bytes_decode_into_runnable_scenarios() {
    let mut buffers = [0usize; 4];
    let mut lent = [0usize; 2];
    for seed in 0u8..40 {
        let bytes: Vec<u8> = (0..60u8)
            .map(|i| i.wrapping_mul(seed).wrapping_add(seed ^ 0x5a))
            .collect();
        let scenario = Scenario::from_bytes(&bytes);
        buffers[scenario.write_buffers] += 1;
        lent[usize::from(scenario.lend_body)] += 1;
        run(&scenario);
    }
    run(&Scenario::from_bytes(&[]));
    // The fuzz target reaches every ring size, and both body entry points.
    assert!(buffers[1..].iter().all(|n| *n > 0), "{buffers:?}");
    assert!(lent.iter().all(|n| *n > 0), "{lent:?}");
}

/// Found by CI: a corrupted response of a task replaced twice in a row (the harness lost
/// track of which task's byte was corrupted).
#[test]
fn corruption_of_a_replaced_task_is_attributed_to_that_task() {
    let ops = vec![
        Op::Steps(4),
        Op::ReplaceTask(204),
        Op::Fault(Fault::Corrupt(0)),
        Op::Steps(3),
        Op::ReplaceTask(0),
        Op::Disconnect,
        Op::Steps(0),
        Op::Steps(6),
    ];
    let s = Scenario {
        image_len: 8754,
        sha256: false,
        lazy_storage: false,
        mqtt_window: None,
        multi_file: false,
        signed: false,
        write_buffers: 1,
        lend_body: false,
        chunk_sizes: vec![510],
        ops,
    };
    run(&s);
}
