//! The application confirmation policy: tasks offered first, accepted now or later, or
//! declined (reported only when configured).

use alloc::string::String;
use alloc::vec;

use crate::agent::{Confirmation, Event};
use crate::error::Error;
use crate::testkit::world::*;
use crate::time::Instant;

fn world(confirmation: Confirmation, decision: Decision) -> World {
    let mut config = test_config();
    config.confirmation = confirmation;
    let mut w = World::new(config, test_image(5000, 4));
    w.decision = decision;
    w.offer_task();
    w
}

#[test]
fn an_accepted_offer_installs() {
    let mut w = world(
        Confirmation::Ask {
            report_decline: false,
        },
        Decision::Accept,
    );
    w.connect();
    assert_eq!(w.run(), Stop::Reboot);
    let offered = w
        .transcript
        .iter()
        .position(|l| l == "notify offered 2.0.0")
        .unwrap();
    let received = w
        .transcript
        .iter()
        .position(|l| l == "notify task 2.0.0")
        .unwrap();
    assert!(offered < received);
    assert_eq!(w.slot_image(), &w.image[..]);
}

#[test]
fn an_offer_can_be_accepted_much_later() {
    let mut w = world(
        Confirmation::Ask {
            report_decline: false,
        },
        Decision::Later,
    );
    w.connect();
    assert_eq!(w.run(), Stop::Quiet);
    assert!(
        w.fetch_offsets.is_empty() && w.progress.is_empty(),
        "nothing happens before the decision"
    );
    w.push_task(); // the same task again: still one offer
    w.run();
    assert_eq!(
        w.transcript
            .iter()
            .filter(|l| l.starts_with("notify offered"))
            .count(),
        1
    );
    w.url_valid_from = w.url_generation; // by the time the user says yes, the URL expired
    let now = w.now;
    w.agent.handle(now, Event::AcceptTask).unwrap();
    assert_eq!(w.run(), Stop::Reboot);
    assert_eq!(w.slot_image(), &w.image[..]);
}

#[test]
fn a_declined_offer_reports_nothing_unless_configured() {
    let mut quiet = world(
        Confirmation::Ask {
            report_decline: false,
        },
        Decision::Decline,
    );
    quiet.connect();
    assert_eq!(quiet.run(), Stop::Quiet);
    assert_eq!(quiet.outcomes, vec![String::from("declined")]);
    assert!(quiet.progress.is_empty());

    let mut loud = world(
        Confirmation::Ask {
            report_decline: true,
        },
        Decision::Decline,
    );
    loud.connect();
    loud.run();
    assert_eq!(loud.progress, vec![-1]);
    assert!(loud
        .transcript
        .iter()
        .any(|l| l.contains("declined by the application")));
}

#[test]
fn decisions_without_an_offer_are_errors() {
    let mut agent = first_boot_agent(test_config(), Instant::ZERO);
    assert_eq!(
        agent.handle(Instant::ZERO, Event::AcceptTask),
        Err(Error::UnexpectedDecision)
    );
    assert_eq!(
        agent.handle(Instant::ZERO, Event::DeclineTask),
        Err(Error::UnexpectedDecision)
    );
}

#[test]
fn an_offer_withdrawn_by_the_cloud_is_canceled() {
    let mut w = world(
        Confirmation::Ask {
            report_decline: false,
        },
        Decision::Later,
    );
    w.connect();
    w.run();
    w.cloud_task = None;
    w.disconnect();
    w.connect(); // asks again: no task any more
    w.run();
    assert_eq!(w.outcomes, vec![String::from("canceled")]);
    let now = w.now;
    assert_eq!(
        w.agent.handle(now, Event::AcceptTask),
        Err(Error::UnexpectedDecision)
    );
}
