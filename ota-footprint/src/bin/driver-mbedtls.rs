//! The ota-embedded driver over mbedTLS (MQTT on 8883 and HTTPS downloads, two
//! `MbedtlsConnector`s sharing one `Tls`, trusting the built-in platform roots) over the dummy
//! peripherals of `dummies.rs`: its `.text` minus `driver`'s is the platform-capable TLS
//! line of BENCHMARKS.md.
#![no_std]
#![no_main]

extern crate alloc;

#[path = "../dummies.rs"]
mod dummies;
#[path = "../rt.rs"]
mod rt;

use core::convert::Infallible;
use core::hint::black_box;
use core::sync::atomic::AtomicU32;

// Linked for the C functions mbedTLS calls (nothing in Rust names them).
use tinyrlibc as _;

use dummies::{App, Boot, Net, Ticks, MQTT_HOST};
use ota_embedded::mbedtls::{CaChain, MbedtlsConnector, Tls};
use ota_embedded::{Driver, MqttClient, Parts, Security, Settings, SyncedClock, TcpConnector};

/// A hardware RNG standing in: its words come from "hardware".
struct Trng;

impl rand_core_010::TryRng for Trng {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        Ok(black_box(0x5EED_5EED))
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        Ok(black_box(0x5EED_5EED_5EED_5EED))
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), Infallible> {
        dest.fill(black_box(0x5E));
        Ok(())
    }
}

impl rand_core_010::TryCryptoRng for Trng {}

/// mbedTLS's debug output, which this firmware does not print.
#[unsafe(no_mangle)]
pub extern "C" fn printf(_format: *const u8) -> i32 {
    0
}

#[unsafe(no_mangle)]
pub extern "C" fn puts(_s: *const u8) -> i32 {
    0
}

#[unsafe(no_mangle)]
pub extern "C" fn putchar(c: i32) -> i32 {
    c
}

#[unsafe(no_mangle)]
pub extern "C" fn _start() -> ! {
    rt::init_heap();
    static mut TRNG: Trng = Trng;
    // SAFETY: `_start` runs once; nothing else takes this reference.
    let trng: &'static mut Trng = unsafe { &mut *core::ptr::addr_of_mut!(TRNG) };
    let net = Net;
    let clock = SyncedClock::new(Ticks(AtomicU32::new(0)));
    let (Ok(tls), Ok(cas)) = (Tls::new(trng), CaChain::platform()) else {
        cortex_m::peripheral::SCB::sys_reset()
    };
    rt::block_on(async {
        let Some((config, login, slot, records)) = dummies::setup() else {
            return;
        };
        let mqtt_tls =
            MbedtlsConnector::new(TcpConnector::new(&net, &net), tls.reference(), &cas, &clock);
        let mqtt: MqttClient<'_, _, 2048, 512> =
            MqttClient::new(&mqtt_tls, MQTT_HOST, 8883, Security::Tls, 60);
        let http =
            MbedtlsConnector::new(TcpConnector::new(&net, &net), tls.reference(), &cas, &clock);
        let parts = Parts {
            mqtt,
            http: &http,
            slot,
            records,
            boot: Boot,
            clock: &clock,
            app: App,
            login,
            settings: Settings::default(),
        };
        if let Ok(mut driver) = Driver::new(config, "1.0.0", parts).await {
            let _ = driver.run().await;
        };
    });
    cortex_m::peripheral::SCB::sys_reset()
}
