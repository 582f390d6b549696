//! The MQTT client and the connectors on their own, against the simulator's broker: what the
//! driver's runs do not show directly.

use ota_core::Qos;
use ota_embedded::{Login, MqttClient, MqttTransport, SecureMode, Security, TcpConnector};
use ota_sim::{DeviceInfo, Sim, SimConfig};

use crate::support::{LoopbackDns, TokioStack, WAIT};

/// Runs a future on a runtime with networking and timers.
pub fn run<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(future)
}

pub fn login(info: &DeviceInfo) -> Login {
    let id = &info.id;
    Login::new(
        &id.product_key,
        &id.device_name,
        &info.device_secret,
        ota_embedded::login::SDK_TIMESTAMP,
        SecureMode::Plain,
    )
    .unwrap()
}

pub fn inform(info: &DeviceInfo, version: &str) -> (String, String) {
    let id = &info.id;
    let topic = format!("/ota/device/inform/{}/{}", id.product_key, id.device_name);
    let payload = format!(r#"{{"id":"1","params":{{"version":"{version}"}}}}"#);
    (topic, payload)
}

#[test]
fn qos_0_publishes_wait_for_nothing_and_qos_1_ones_for_their_puback() {
    let sim = Sim::start(SimConfig::default()).unwrap();
    let info = sim.add_device().unwrap();
    let (stack, dns) = (TokioStack, LoopbackDns);
    let tcp = TcpConnector::new(&stack, &dns);
    let mut mqtt: MqttClient<'_, _, 4096, 1024> =
        MqttClient::new(&tcp, sim.mqtt_host(), sim.mqtt_port(), Security::Plain, 60);
    run(async {
        mqtt.connect(&login(&info)).await.unwrap();
        let (topic, payload) = inform(&info, "3.0.0");
        mqtt.publish(&topic, payload.as_bytes(), Qos::AtMostOnce)
            .await
            .unwrap();
        assert_eq!(
            mqtt.unacknowledged(),
            0,
            "a QoS 0 publish expects no PUBACK"
        );
        let (topic, payload) = inform(&info, "3.0.1");
        mqtt.publish(&topic, payload.as_bytes(), Qos::AtLeastOnce)
            .await
            .unwrap();
        assert_eq!(mqtt.unacknowledged(), 1);
        // Returns once the broker acknowledged the QoS 1 publish (a QoS 0 one counted as
        // unacknowledged would keep it waiting for a PUBACK that never comes).
        tokio::time::timeout(WAIT, mqtt.disconnect())
            .await
            .expect("disconnect waits for nothing but the QoS 1 PUBACK")
            .unwrap();
        assert_eq!(mqtt.unacknowledged(), 0);
    });
    // Both arrived: the broker delivered them to the cloud in order.
    sim.wait_version(&info, "default", "3.0.1", WAIT).unwrap();
}
