//! The power-loss sweep for a gateway with two sub-devices downloading at once: the session
//! machine logs both in, their agents download in lockstep (one step each in turn), and the
//! gateway's power is cut at every write (whole and torn) and every record save of either
//! sub-device and during either activation. Then both agents boot from what their storage
//! holds, the session logs them in again, and each resumes. Each sub-device's cloud side is
//! its own simulated world (`testkit::world`), which is what the gateway's one connection
//! multiplexes.

use alloc::vec;
use alloc::vec::Vec;
use serde_json::Value;

use super::*;
use crate::testkit::world::{test_config, test_image, Cut, Stop, World};

const IMAGE_LEN: usize = 12_000;
const CHECKPOINT: u64 = 4096;

struct Site {
    session: Gateway,
    worlds: [World; 2],
    /// Each sub-device's agent was given `Connected` by the session.
    online: [bool; 2],
    /// Each world has nothing more to do.
    quiet: [bool; 2],
    /// Both downloaded at the same time at some point.
    overlapped: bool,
}

fn identity(i: usize) -> DeviceIdentity {
    DeviceIdentity::new("a1SubPK0001", if i == 0 { "node1" } else { "node2" }).unwrap()
}

fn new_session(now: Instant) -> Gateway {
    let subs = (0..2)
        .map(|i| Subdevice {
            identity: identity(i),
            secret: alloc::format!("secret-{i}"),
        })
        .collect();
    let config = GatewayConfig::new(DeviceIdentity::new("a1GatewayPK", "gw01").unwrap(), subs);
    Gateway::new(config, now).unwrap()
}

impl Site {
    fn new(seed: [u8; 2]) -> Site {
        let world = |seed: u8| {
            let mut w = World::new(test_config(), test_image(IMAGE_LEN, seed));
            w.offer_task();
            w
        };
        Site {
            session: new_session(Instant::ZERO),
            worlds: [world(seed[0]), world(seed[1])],
            online: [false; 2],
            quiet: [false; 2],
            overlapped: false,
        }
    }

    fn now(&self) -> Instant {
        self.worlds[0].now.max(self.worlds[1].now)
    }

    /// The cloud's side of the session: topology known, every login accepted.
    fn serve_session(&mut self) {
        while let Some(action) = self.session.poll_action() {
            match action {
                GatewayAction::Publish { topic, payload } => {
                    let json: Value = serde_json::from_slice(&payload).unwrap();
                    let id = json["id"].as_str().unwrap();
                    let (reply_topic, data) = if topic.ends_with("/topo/get") {
                        let list: Vec<Value> = (0..2)
                            .map(|i| {
                                let d = identity(i);
                                serde_json::json!({"productKey": d.product_key(), "deviceName": d.device_name()})
                            })
                            .collect();
                        (alloc::format!("{topic}_reply"), Value::Array(list))
                    } else {
                        (alloc::format!("{topic}_reply"), json["params"].clone())
                    };
                    let reply = serde_json::json!({"id": id, "code": 200, "data": data});
                    let bytes = serde_json::to_vec(&reply).unwrap();
                    let now = self.now();
                    let message = GatewayEvent::Message {
                        topic: &reply_topic,
                        payload: &bytes,
                    };
                    self.session.handle(now, message);
                }
                GatewayAction::Subscribe { .. } => {}
                GatewayAction::SubdeviceOnline { index } => {
                    self.online[index] = true;
                    self.quiet[index] = false;
                    self.worlds[index].connect();
                }
                GatewayAction::SubdeviceOffline { index } => {
                    self.online[index] = false;
                    self.worlds[index].disconnect();
                }
                GatewayAction::SubdeviceGaveUp { index, reason } => {
                    panic!("sub-device {index} given up: {reason}")
                }
            }
        }
    }

    fn connect(&mut self) {
        let now = self.now();
        self.session.handle(now, GatewayEvent::Connected);
        self.serve_session();
    }

    /// Steps both sub-devices in turn until both are quiet; `true` when the power failed.
    fn run(&mut self) -> bool {
        loop {
            self.serve_session();
            if self.quiet == [true; 2] {
                return false;
            }
            let downloading = |w: &World| w.agent.phase() == crate::agent::Phase::Downloading;
            self.overlapped |= self.worlds.iter().all(downloading);
            for i in 0..2 {
                if self.quiet[i] {
                    continue;
                }
                match self.worlds[i].step() {
                    None => {}
                    Some(Stop::Quiet) => self.quiet[i] = true,
                    Some(Stop::PowerLost) => return true,
                    Some(Stop::Reboot) => {
                        // The sub-device reboots into what was flashed; the gateway stays up.
                        self.worlds[i].reboot();
                        if self.online[i] {
                            self.worlds[i].connect();
                        }
                    }
                }
            }
        }
    }

    /// The gateway's power comes back: both agents boot from storage, the session starts over.
    fn power_cycle(&mut self) {
        for w in &mut self.worlds {
            w.reboot();
        }
        self.online = [false; 2];
        self.quiet = [false; 2];
        self.session = new_session(self.now());
        self.connect();
    }
}

/// Runs both upgrades with the power cut at `cut` of sub-device `victim`; returns the bytes
/// each downloaded twice.
fn upgrade_with_cut(victim: usize, cut: Cut) -> [u64; 2] {
    let mut site = Site::new([3, 5]);
    site.worlds[victim].cut = Some(cut);
    site.connect();
    let mut redownloaded = [0u64; 2];
    let mut cuts = 0;
    // Whether each sub-device was flashing when the power failed.
    let mut flashing = [false; 2];
    while site.run() {
        cuts += 1;
        assert!(cuts < 3);
        for (i, w) in site.worlds.iter().enumerate() {
            flashing[i] = w.agent.phase() == crate::agent::Phase::Activating;
        }
        let received: Vec<(u64, usize)> = site
            .worlds
            .iter()
            .map(|w| (w.agent.fetched_size(), w.fetch_offsets.len()))
            .collect();
        site.power_cycle();
        assert!(!site.run(), "one cut only");
        for (i, w) in site.worlds.iter().enumerate() {
            if let Some(resumed) = w.fetch_offsets.get(received[i].1) {
                redownloaded[i] += received[i].0.saturating_sub(*resumed);
            }
        }
    }
    for (i, w) in site.worlds.iter().enumerate() {
        let cut_while_flashing = i == victim && cut == Cut::Activate;
        if cut_while_flashing {
            assert_eq!(w.running, "1.0.0", "sub {i}");
        }
        if w.running == "1.0.0" {
            // Power lost while flashing (the cut's own, or the other sub-device's at the same
            // moment): the old image runs, reported once as -1; never a half-flashed one.
            assert!(
                cut_while_flashing || flashing[i],
                "sub {i}, cut {cut:?} of {victim}"
            );
            assert_eq!(
                w.progress.iter().filter(|p| **p < 0).collect::<Vec<_>>(),
                vec![&-1]
            );
            continue;
        }
        assert_eq!(
            w.running, "2.0.0",
            "sub {i}, cut {cut:?} of {victim}: {:?}",
            w.outcomes
        );
        assert_eq!(
            w.slot_image(),
            &w.image[..],
            "sub {i}: the verified image, nothing else"
        );
        assert!(w.confirmed, "sub {i}, cut {cut:?} of {victim}");
        assert_eq!(w.record, None);
        assert!(
            !w.progress.iter().any(|p| *p < 0),
            "sub {i}: {:?}",
            w.progress
        );
    }
    redownloaded
}

#[test]
fn two_sub_devices_downloading_survive_a_cut_at_every_point_and_each_resumes() {
    // The operations of an uninterrupted run are the cut points.
    let mut clean = Site::new([3, 5]);
    clean.connect();
    assert!(!clean.run());
    assert!(clean.overlapped, "the two downloads ran at the same time");
    for w in &clean.worlds {
        assert_eq!(w.running, "2.0.0");
        assert!(w.writes >= IMAGE_LEN / 1024);
    }
    let mut cut_points = 0;
    let mut worst = 0;
    for victim in 0..2 {
        let (writes, saves) = (clean.worlds[victim].writes, clean.worlds[victim].saves);
        let mut cuts: Vec<Cut> = Vec::new();
        for n in 0..writes {
            for torn in [0, 1, 512, 1024] {
                cuts.push(Cut::Write { n, torn });
            }
        }
        cuts.extend((0..saves).map(|n| Cut::Save { n }));
        cuts.push(Cut::Activate);
        for cut in cuts {
            let redownloaded = upgrade_with_cut(victim, cut);
            // Each sub-device resumes from its own record: at most one checkpoint interval
            // again, whichever of them the cut hit.
            for (i, bytes) in redownloaded.iter().enumerate() {
                assert!(
                    *bytes <= CHECKPOINT,
                    "sub {i}, cut {cut:?} of {victim}: {bytes}"
                );
                worst = worst.max(*bytes);
            }
            cut_points += 1;
        }
    }
    assert!(cut_points > 100, "{cut_points} cut points");
    assert!(worst > 0, "some cut must cost a re-download");
    std::eprintln!("gateway power-loss sweep: {cut_points} cut points, worst re-download {worst}");
}
