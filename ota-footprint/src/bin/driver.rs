//! The ota-embedded driver over dummy peripherals (see `dummies.rs`), plain TCP only.
#![no_std]
#![no_main]

extern crate alloc;

#[path = "../dummies.rs"]
mod dummies;
#[path = "../rt.rs"]
mod rt;

use core::sync::atomic::AtomicU32;

use dummies::{App, Boot, Net, Ticks, MQTT_HOST};
use ota_embedded::{Driver, MqttClient, Parts, Security, Settings, TcpConnector};

#[unsafe(no_mangle)]
pub extern "C" fn _start() -> ! {
    rt::init_heap();
    let net = Net;
    rt::block_on(async {
        let Some((config, login, slot, records)) = dummies::setup() else {
            return;
        };
        let tcp = TcpConnector::new(&net, &net);
        let mqtt: MqttClient<'_, _, 2048, 512> =
            MqttClient::new(&tcp, MQTT_HOST, 1883, Security::Plain, 60);
        let parts = Parts {
            mqtt,
            http: TcpConnector::new(&net, &net),
            slot,
            records,
            boot: Boot,
            clock: Ticks(AtomicU32::new(0)),
            app: App,
            login,
            settings: Settings::default(),
        };
        if let Ok(mut driver) = Driver::new(config, "1.0.0", parts).await {
            let _ = driver.run().await;
        }
    });
    cortex_m::peripheral::SCB::sys_reset()
}
