//! ota-core alone: build an agent, connect, take a push, stream a body, drain the actions.
#![no_std]
#![no_main]

extern crate alloc;

#[path = "../rt.rs"]
mod rt;

use core::hint::black_box;

use ota_core::{Action, Agent, Boot, Config, DeviceIdentity, Event, FetchId, Instant};

#[unsafe(no_mangle)]
pub extern "C" fn _start() -> ! {
    rt::init_heap();
    let Ok(identity) = DeviceIdentity::new("a1TestPK001", "dev01") else {
        loop {}
    };
    let boot = Boot {
        running_version: "1.0.0",
        record: black_box(None),
    };
    #[allow(unused_mut)]
    let mut config = Config::new(identity);
    // With the feature, a key the optimiser cannot see, so the verifier stays linked.
    #[cfg(feature = "signature")]
    {
        let modulus: &[u8; 256] = black_box(&[0xC5; 256]);
        config.package_key = ota_core::signature::PackageKey::from_modulus(modulus).ok();
    }
    let Ok(mut agent) = Agent::new(config, boot, Instant::ZERO) else {
        loop {}
    };
    let mut now = 0u64;
    // Which input comes next, cycling through the nine below. A counter rather than
    // `now % 9`: a 64-bit remainder would link the 64-bit division of compiler_builtins
    // into the figure for the firmware loop's sake, not ota-core's.
    let mut input = 0u8;
    let mut body = [0u8; 512];
    loop {
        now += 1;
        input = if input == 8 { 0 } else { input + 1 };
        let at = Instant::from_millis(now);
        // Inputs from "hardware": black_box keeps the optimiser from knowing them.
        let _ = match black_box(input) {
            0 => agent.handle(at, Event::Connected),
            1 => agent.handle(
                at,
                Event::Message {
                    topic: black_box("/ota/device/upgrade/a1TestPK001/dev01"),
                    payload: black_box(&body[..]),
                },
            ),
            2 => agent
                .handle_body(at, FetchId(black_box(1)), black_box(&body[..]))
                .map(drop),
            3 => agent.handle(
                at,
                Event::HttpResponse {
                    fetch: FetchId(black_box(1)),
                    status: black_box(206),
                    content_length: black_box(Some(512)),
                    content_range: black_box(Some("bytes 0-511/4096")),
                },
            ),
            4 => agent.handle(at, Event::WriteDone),
            5 => agent.handle(at, Event::RecordSaved),
            6 => agent.handle(at, Event::HttpEnd { fetch: FetchId(1) }),
            7 => agent.handle(
                at,
                Event::ReadDone {
                    len: black_box(512),
                },
            ),
            _ => agent.handle_timeout(at),
        };
        while let Some(action) = agent.poll_action() {
            let mut action = action;
            match &mut action {
                Action::Write { data, .. } => body[0] = data.first().copied().unwrap_or(0),
                Action::Read { buf, .. } => buf.fill(body[1]),
                _ => {}
            }
            black_box(&action);
        }
        black_box(&mut body);
    }
}
