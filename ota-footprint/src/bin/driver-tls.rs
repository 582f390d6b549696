//! The ota-embedded driver over TLS (MQTT on 8883 and HTTPS downloads, two `TlsConnector`s)
//! over the dummy peripherals of `dummies.rs`: the `tls` line of BENCHMARKS.md's footprint
//! table is this binary's `.text` minus `driver`'s.
#![no_std]
#![no_main]

extern crate alloc;

#[path = "../dummies.rs"]
mod dummies;
#[path = "../rt.rs"]
mod rt;

use core::hint::black_box;
use core::sync::atomic::AtomicU32;

use dummies::{App, Boot, Net, Ticks, MQTT_HOST};
use ota_embedded::tls::{RECORD_RX_LEN, RECORD_TX_LEN};
use ota_embedded::{Driver, MqttClient, Parts, Security, Settings, TcpConnector, TlsConnector};

/// A hardware RNG standing in: its words come from "hardware".
struct Trng;

impl rand_core::RngCore for Trng {
    fn next_u32(&mut self) -> u32 {
        black_box(0x5EED_5EED)
    }

    fn next_u64(&mut self) -> u64 {
        black_box(0x5EED_5EED_5EED_5EED)
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        dest.fill(black_box(0x5E));
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl rand_core::CryptoRng for Trng {}

/// The CA the firmware trusts (DER; the bytes come from flash).
static CA: [u8; 512] = [0x30; 512];

#[unsafe(no_mangle)]
pub extern "C" fn _start() -> ! {
    rt::init_heap();
    let net = Net;
    let clock = Ticks(AtomicU32::new(0));
    let mut mqtt_rx = [0u8; RECORD_RX_LEN];
    let mut mqtt_tx = [0u8; RECORD_TX_LEN];
    let mut http_rx = [0u8; RECORD_RX_LEN];
    let mut http_tx = [0u8; RECORD_TX_LEN];
    let cas: [&[u8]; 1] = [black_box(&CA[..])];
    rt::block_on(async {
        let Some((config, login, slot, records)) = dummies::setup() else {
            return;
        };
        let mqtt_tls = TlsConnector::new(
            TcpConnector::new(&net, &net),
            &cas,
            Trng,
            &clock,
            &mut mqtt_rx,
            &mut mqtt_tx,
        );
        let mqtt: MqttClient<'_, _, 2048, 512> =
            MqttClient::new(&mqtt_tls, MQTT_HOST, 8883, Security::Tls, 60);
        let http = TlsConnector::new(
            TcpConnector::new(&net, &net),
            &cas,
            Trng,
            &clock,
            &mut http_rx,
            &mut http_tx,
        );
        let parts = Parts {
            mqtt,
            http,
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
